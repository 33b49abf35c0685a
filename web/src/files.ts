// Attachments in the page. They need the bearer token, so an <img src> cannot
// fetch them: each is fetched once, kept as a blob: URL (the page's CSP
// allows blob: images) and shared by every message that shows it.

import type { Api } from "./api";
import type { AttachedFile } from "./protocol/types";

/** Sizes as people read them: "812 B", "48 KB", "3.2 MB". */
export function formatBytes(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1_000_000) return `${Math.round(bytes / 1000)} KB`;
  if (bytes < 1_000_000_000) return `${(bytes / 1_000_000).toFixed(1)} MB`;
  return `${(bytes / 1_000_000_000).toFixed(1)} GB`;
}

/** Whether a file is shown as a picture (the server made a thumbnail of it). */
export const isPicture = (file: AttachedFile) => file.thumbnail === true && file.content_type.startsWith("image/");

/** A box of `width` x `height` scaled to fit `edge` on its longer side, never enlarged. */
export function fitWithin(width: number, height: number, edge: number): { width: number; height: number } {
  const scale = Math.min(1, edge / Math.max(width, height, 1));
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/** blob: URLs of fetched attachments and pictures, by path. */
export class FileCache {
  private urls = new Map<string, Promise<string>>();

  constructor(private readonly api: Api) {}

  /** The file's (or its thumbnail's) blob: URL, fetched on first use. */
  url(file: AttachedFile, thumbnail: boolean): Promise<string> {
    return this.fetched(`/api/attachments/${file.id}${thumbnail ? "/thumbnail" : ""}`);
  }

  /** The blob: URL of what the API serves at `path` (a profile picture), fetched on first use. */
  fetched(path: string): Promise<string> {
    let url = this.urls.get(path);
    if (!url) {
      url = this.api.blob(path).then((blob) => URL.createObjectURL(blob));
      // A failure is not remembered: the next look tries again.
      url.catch(() => this.urls.delete(path));
      this.urls.set(path, url);
    }
    return url;
  }

  /** Saves the file under its name, as a download. */
  async save(file: AttachedFile): Promise<void> {
    const link = document.createElement("a");
    link.href = await this.url(file, false);
    link.download = file.filename;
    link.rel = "noopener";
    document.body.append(link);
    link.click();
    link.remove();
  }

  /** Lets go of every blob: URL (on sign-out). */
  clear(): void {
    for (const url of this.urls.values()) url.then((u) => URL.revokeObjectURL(u), () => undefined);
    this.urls.clear();
  }
}
