#!/usr/bin/env python3
"""Writes a one-layer image as a `docker save` archive, which `ctr images
import` and `docker load` both read: for images of a file or two (the pause
image of scripts/cluster.sh) that need no Docker engine to exist.

    oci_image.py --name localhost:5000/pause:3.10 --entrypoint /pause \
        --file build/pause:/pause:0755 --out pause.tar
"""

import argparse
import hashlib
import io
import json
import tarfile


def layer(files):
    """An uncompressed tar of (source, path in the image, mode), owned by root,
    with fixed times so the same files make the same layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for source, target, mode in files:
            with open(source, "rb") as handle:
                data = handle.read()
            info = tarfile.TarInfo(target.lstrip("/"))
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="repository:tag")
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--user", default="65535:65535")
    parser.add_argument(
        "--file", action="append", required=True, help="SOURCE:PATH:OCTAL-MODE"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    files = []
    for spec in args.file:
        source, target, mode = spec.rsplit(":", 2)
        files.append((source, target, int(mode, 8)))
    layer_bytes = layer(files)
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [args.entrypoint], "User": args.user},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "scripts/oci_image.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [args.name], "Layers": [layer_name]}]
    ).encode()

    with tarfile.open(args.out, mode="w") as archive:
        for name, data in (
            (layer_name, layer_bytes),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
