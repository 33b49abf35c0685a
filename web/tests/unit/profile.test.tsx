// @vitest-environment jsdom
// The profile dialog opens on the colour people see now, and closes on Escape.
import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ChatActions } from "../../src/actions";
import { colorOf } from "../../src/components/Avatar";
import { ProfileForm } from "../../src/components/ProfileForm";

afterEach(cleanup);

/** `#rrggbb` as the browser writes a computed colour. */
const rgb = (hex: string) =>
  `rgb(${[1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)).join(", ")})`;

describe("the profile dialog", () => {
  it("shows the colour the avatar has: the one derived from the name until one is chosen", () => {
    const onDone = vi.fn();
    render(<ProfileForm username="bob" actions={{} as ChatActions} onDone={onDone} />);
    const swatch = screen.getByLabelText("Avatar colour") as HTMLInputElement;
    expect(swatch.value).toBe(colorOf("bob"));
    expect(swatch.value).toMatch(/^#[0-9a-f]{6}$/);
    const preview = document.querySelector(".profile-preview .avatar") as HTMLElement;
    expect(preview.style.background).toBe(rgb(swatch.value));

    fireEvent.keyDown(screen.getByRole("dialog", { name: "Your profile" }), { key: "Escape" });
    expect(onDone).toHaveBeenCalled();
  });

  it("starts from a colour chosen before", () => {
    render(
      <ProfileForm
        username="bob"
        profile={{ displayName: "Bob", color: "#aa3355", picture: null }}
        actions={{} as ChatActions}
        onDone={() => {}}
      />,
    );
    expect((screen.getByLabelText("Avatar colour") as HTMLInputElement).value).toBe("#aa3355");
  });
});

describe("avatars", () => {
  it("write initials in black or white, whichever reads on the colour", async () => {
    const { textOn } = await import("../../src/components/Avatar");
    expect(textOn("#1d2330")).toBe("#ffffff");
    expect(textOn("#f5e050")).toBe("#000000");
    expect(textOn("#2f5bd3")).toBe("#ffffff");
  });
});
