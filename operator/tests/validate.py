"""Schema checks the operator's tests run (kubernetes-validate is installed by
scripts/test.sh into .venv):

  validate.py objects KUBE_VERSION FILE...   every object against the Kubernetes
                                             OpenAPI schemas (strict)
  validate.py crd CRD_FILE FILE...           ChatClusters against the CRD's schema

Exits non-zero and prints the reasons when anything fails.
"""
import subprocess
import sys

import jsonschema
import yaml


def objects(version, files):
    # Custom kinds (ServiceMonitor) have no schema in the Kubernetes release;
    # kubernetes-validate skips them with a warning, which is what we want.
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict", "--no-warn", *files],
        capture_output=True, text=True)
    sys.stdout.write(result.stdout + result.stderr)
    return result.returncode


def crd(crd_file, files):
    with open(crd_file) as f:
        definition = yaml.safe_load(f)
    schema = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    failures = 0
    for name in files:
        with open(name) as f:
            for document in yaml.safe_load_all(f):
                for error in jsonschema.Draft7Validator(schema).iter_errors(document):
                    print(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
                    failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    mode, target, *files = sys.argv[1:]
    sys.exit(objects(target, files) if mode == "objects" else crd(target, files))
