import { useEffect, useState } from "react";
import type { ChatActions } from "../../actions";
import { fitWithin, formatBytes, isPicture } from "../../files";
import type { AttachedFile } from "../../protocol/types";

/** Thumbnails are shown at most this many CSS pixels on a side. */
const PICTURE_EDGE = 240;

/** A message's files, if any: pictures as thumbnails that open the full image, the rest as downloads. */
export function Attachments({ files, actions }: { files?: AttachedFile[]; actions: ChatActions }) {
  if (!files || files.length === 0) return null;
  return (
    <ul className="attachments" aria-label="Files">
      {files.map((file) => (
        <li key={file.id}>
          {isPicture(file) ? (
            <Picture file={file} actions={actions} />
          ) : (
            <button
              type="button"
              className="file"
              onClick={() => void actions.files.save(file)}
              aria-label={`Download ${file.filename}, ${formatBytes(file.size)}`}
            >
              <span aria-hidden="true">📄</span> {file.filename} <span className="size">{formatBytes(file.size)}</span>
            </button>
          )}
        </li>
      ))}
    </ul>
  );
}

function Picture({ file, actions }: { file: AttachedFile; actions: ChatActions }) {
  const [url, setUrl] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let shown = true;
    actions.files.url(file, true).then(
      (thumbnail) => shown && setUrl(thumbnail),
      () => shown && setFailed(true),
    );
    return () => {
      shown = false;
    };
  }, [actions.files, file]);
  const box = fitWithin(file.width ?? PICTURE_EDGE, file.height ?? PICTURE_EDGE, PICTURE_EDGE);
  const open = async () => {
    const full = await actions.files.url(file, false);
    window.open(full, "_blank", "noopener");
  };
  return (
    <button
      type="button"
      className="picture"
      onClick={() => void open()}
      aria-label={`Open ${file.filename}`}
      style={{ width: box.width, height: box.height }}
    >
      {url ? (
        <img src={url} alt={file.filename} width={box.width} height={box.height} />
      ) : (
        <span className="picture-placeholder">{failed ? "Cannot load the picture" : "Loading…"}</span>
      )}
    </button>
  );
}
