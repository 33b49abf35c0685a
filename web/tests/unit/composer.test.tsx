// @vitest-environment jsdom
// The composer and a message's edit box as a user drives them: typing,
// completing a mention from the keyboard, attaching a file that uploads
// before Send is allowed, and editing a sent message.
import { act, cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ChatActions } from "../../src/actions";
import type { Api } from "../../src/api";
import { Composer } from "../../src/components/room/Composer";
import { Message } from "../../src/components/room/Message";
import { FileCache } from "../../src/files";
import type { AttachedFile } from "../../src/protocol/types";
import { initialState, type ChatState } from "../../src/state";
import { room, text } from "./fixtures";

afterEach(cleanup);

/** Actions that record what the component asked for; uploads wait for the test. */
function recorder() {
  const uploads: { file: File; progress: (fraction: number) => void; done: (file: AttachedFile) => void }[] = [];
  const actions = {
    send: vi.fn(),
    typing: vi.fn(),
    discard: vi.fn(),
    editMessage: vi.fn(),
    deleteMessage: vi.fn(),
    react: vi.fn(),
    openThread: vi.fn(async () => {}),
    upload: vi.fn(
      (_room: string, file: File, progress: (fraction: number) => void) =>
        new Promise<AttachedFile>((done) => uploads.push({ file, progress, done })),
    ),
    // Nothing here shows a picture, so the cache never calls the API.
    files: new FileCache({} as Api),
  } as unknown as ChatActions;
  return { actions: actions as ChatActions & Record<string, ReturnType<typeof vi.fn>>, uploads };
}

function stateWith(names: Record<string, string>): ChatState {
  const state = initialState("me", "me");
  return { ...state, names: { ...state.names, ...names } };
}

/** Types `value` as a user would, the caret at its end. */
function type(box: HTMLTextAreaElement, value: string) {
  fireEvent.change(box, { target: { value, selectionStart: value.length, selectionEnd: value.length } });
}

describe("the composer", () => {
  const general = room("general", { members: ["me", "bob", "alice", "albert"] });
  const names = { bob: "bob", alice: "alice", albert: "albert" };

  it("sends on Enter, trimmed, and clears the box", () => {
    const { actions } = recorder();
    render(<Composer room={general} state={stateWith(names)} actions={actions} title="general" />);
    const box = screen.getByLabelText("Message general") as HTMLTextAreaElement;
    type(box, "  hello there  ");
    fireEvent.keyDown(box, { key: "Enter" });
    expect(actions.send).toHaveBeenCalledWith("general", "hello there", []);
    expect(box.value).toBe("");
    expect(actions.typing).toHaveBeenCalledWith("general");
  });

  it("offers the members whose names start with what follows @, and completes from the keyboard", () => {
    const { actions } = recorder();
    render(<Composer room={general} state={stateWith(names)} actions={actions} title="general" />);
    const box = screen.getByLabelText("Message general") as HTMLTextAreaElement;
    type(box, "hi @al");
    const options = screen.getAllByRole("option").map((o) => o.textContent);
    expect(options).toEqual(["@albert", "@alice"]);
    fireEvent.keyDown(box, { key: "ArrowDown" });
    expect(screen.getByRole("option", { selected: true }).textContent).toBe("@alice");
    fireEvent.keyDown(box, { key: "Enter" });
    expect(box.value).toBe("hi @alice ");
    expect(screen.queryByRole("listbox")).toBeNull();
    expect(actions.send).not.toHaveBeenCalled();

    // The room's owner may call everyone.
    type(box, "hi @alice and @r");
    expect(screen.getAllByRole("option").map((o) => o.textContent)).toEqual(["everyone in the room @room"]);
    type(box, "hi @alice and @b");
    fireEvent.keyDown(box, { key: "Escape" });
    expect(screen.queryByRole("listbox")).toBeNull();
    fireEvent.keyDown(box, { key: "Enter" });
    expect(actions.send).toHaveBeenCalledWith("general", "hi @alice and @b", []);
  });

  it("offers people by the name they show as well as their username, and writes the username", () => {
    const { actions } = recorder();
    const state = stateWith(names);
    state.profiles.bob = { displayName: "Robert Smith", color: null, picture: null };
    render(<Composer room={general} state={state} actions={actions} title="general" />);
    const box = screen.getByLabelText("Message general") as HTMLTextAreaElement;
    type(box, "ask @smi");
    expect(screen.getAllByRole("option").map((o) => o.textContent)).toEqual(["Robert Smith @bob"]);
    fireEvent.keyDown(box, { key: "Tab" });
    expect(box.value).toBe("ask @bob ");
  });

  it("sends a file only once it is uploaded, and drops one removed while uploading", async () => {
    const { actions, uploads } = recorder();
    render(<Composer room={general} state={stateWith(names)} actions={actions} title="general" />);
    const input = screen.getByLabelText("Files to attach") as HTMLInputElement;
    const send = screen.getByRole("button", { name: "Send" }) as HTMLButtonElement;
    const photo = new File(["abc"], "photo.png", { type: "image/png" });
    const draft = new File(["x"], "draft.txt", { type: "text/plain" });
    fireEvent.change(input, { target: { files: [photo, draft] } });
    expect(actions.upload).toHaveBeenCalledTimes(2);
    expect(send.disabled).toBe(true);
    act(() => uploads[0].progress(0.5));
    expect((screen.getByLabelText("Uploading photo.png") as HTMLProgressElement).value).toBe(0.5);

    fireEvent.click(screen.getByRole("button", { name: "Remove draft.txt" }));
    const stored: AttachedFile = { id: "f1", filename: "photo.png", content_type: "image/png", size: 3 };
    const late: AttachedFile = { id: "f2", filename: "draft.txt", content_type: "text/plain", size: 1 };
    await act(async () => {
      uploads[0].done(stored);
      uploads[1].done(late);
    });
    expect(actions.discard).toHaveBeenCalledWith(late);
    expect(send.disabled).toBe(false);
    fireEvent.click(send);
    expect(actions.send).toHaveBeenCalledWith("general", "", [stored]);
  });
});

describe("a message", () => {
  it("is edited by its author: Edit, change, Enter saves; Escape keeps it", () => {
    const { actions } = recorder();
    const mine = text("general", 7, "me", { content: "helo" });
    const state = stateWith({});
    render(
      <ol>
        <Message message={mine} state={state} actions={actions} manager={false} />
      </ol>,
    );
    fireEvent.click(screen.getByRole("button", { name: "Edit" }));
    const box = screen.getByLabelText("Edit your message") as HTMLTextAreaElement;
    expect(box.value).toBe("helo");
    fireEvent.change(box, { target: { value: "hello" } });
    fireEvent.keyDown(box, { key: "Enter" });
    expect(actions.editMessage).toHaveBeenCalledWith("general", 7, "hello");
    expect(screen.queryByLabelText("Edit your message")).toBeNull();

    fireEvent.click(screen.getByRole("button", { name: "Edit" }));
    fireEvent.change(screen.getByLabelText("Edit your message"), { target: { value: "oops" } });
    fireEvent.keyDown(screen.getByLabelText("Edit your message"), { key: "Escape" });
    expect(actions.editMessage).toHaveBeenCalledTimes(1);
  });

  it("offers no Edit on someone else's message", () => {
    const { actions } = recorder();
    render(
      <ol>
        <Message message={text("general", 3, "bob")} state={stateWith({ bob: "bob" })} actions={actions} manager={false} />
      </ol>,
    );
    expect(screen.queryByRole("button", { name: "Edit" })).toBeNull();
    expect(screen.queryByRole("button", { name: "Delete" })).toBeNull();
  });
});
