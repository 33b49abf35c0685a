import { describe, expect, it } from "vitest";
import { fitWithin, formatBytes, isPicture } from "../../src/files";
import type { AttachedFile } from "../../src/protocol/types";

const file = (over: Partial<AttachedFile>): AttachedFile => ({
  id: "f1",
  filename: "cat.png",
  content_type: "image/png",
  size: 1000,
  ...over,
});

describe("attachments in the page", () => {
  it("writes sizes as people read them", () => {
    expect(formatBytes(812)).toBe("812 B");
    expect(formatBytes(48_213)).toBe("48 KB");
    expect(formatBytes(3_200_000)).toBe("3.2 MB");
    expect(formatBytes(10_485_760)).toBe("10.5 MB");
  });

  it("fits a picture's box within an edge, keeping its shape and never enlarging it", () => {
    expect(fitWithin(1200, 600, 240)).toEqual({ width: 240, height: 120 });
    expect(fitWithin(600, 1200, 240)).toEqual({ width: 120, height: 240 });
    expect(fitWithin(64, 48, 240)).toEqual({ width: 64, height: 48 });
    expect(fitWithin(0, 0, 240)).toEqual({ width: 1, height: 1 });
  });

  it("shows as pictures only the images the server made thumbnails of", () => {
    expect(isPicture(file({ thumbnail: true }))).toBe(true);
    expect(isPicture(file({}))).toBe(false);
    expect(isPicture(file({ content_type: "text/plain; charset=utf-8", thumbnail: true }))).toBe(false);
  });
});
