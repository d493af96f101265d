import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FrameReader, agentReply, cwdFrame, envFrame, execFrame, frame, stdinFrames, windowFrame, AgentProtocolError, FRAME_CWD, FRAME_DATA, FRAME_ENV, FRAME_ERROR, FRAME_EXEC, FRAME_EXIT, FRAME_HEADER,
  FRAME_RESIZE, FRAME_TTY,
  MAX_DATA_BYTES, MAX_EXEC_BYTES, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
} from "./agent-protocol.js";

test("agent frames: EXEC words NUL-terminated, stdin cut into 64 KiB DATA frames", () => {
  const e = execFrame(["sh", "-c", "echo ü"]);
  assert.deepEqual([e[0], e[1], e.readUInt32LE(4)], [FRAME_EXEC, 0, e.length - FRAME_HEADER]);
  assert.equal(e.subarray(FRAME_HEADER).toString(), "sh\0-c\0echo ü\0");
  assert.throws(() => execFrame([]), AgentProtocolError);
  assert.throws(() => execFrame(["a\0b"]), /NUL/);
  assert.throws(() => execFrame(["x".repeat(MAX_EXEC_BYTES)]), /longer than/);
  const frames = stdinFrames(new Uint8Array(MAX_DATA_BYTES * 2 + 5));
  assert.deepEqual(frames.map((f) => [f[0], f[1], f.readUInt32LE(4)]), [
    [FRAME_DATA, STREAM_STDIN, MAX_DATA_BYTES], [FRAME_DATA, STREAM_STDIN, MAX_DATA_BYTES], [FRAME_DATA, STREAM_STDIN, 5],
  ]);
});

test("agent frames: ENV entries NAME=VALUE and CWD an absolute directory, NUL-terminated; TTY and RESIZE rows and columns", () => {
  const e = envFrame(["A=1", "B=x=y", "EMPTY="]);
  assert.deepEqual([e[0], e.readUInt32LE(4)], [FRAME_ENV, e.length - FRAME_HEADER]);
  assert.equal(e.subarray(FRAME_HEADER).toString(), "A=1\0B=x=y\0EMPTY=\0");
  assert.throws(() => envFrame(["NOVALUE"]), /expected NAME=VALUE/);
  assert.throws(() => envFrame(["=x"]), /expected NAME=VALUE/);
  assert.throws(() => envFrame(["A=\0"]), /NUL/);
  const c = cwdFrame("/tmp/work dir");
  assert.deepEqual([c[0], c.subarray(FRAME_HEADER).toString()], [FRAME_CWD, "/tmp/work dir\0"]);
  assert.throws(() => cwdFrame("relative"), /absolute/);
  assert.throws(() => cwdFrame(""), /absolute/);
  const t = windowFrame(FRAME_TTY, 40, 132);
  assert.deepEqual([t[0], t.readUInt32LE(4), t.readUInt16LE(8), t.readUInt16LE(10)], [FRAME_TTY, 4, 40, 132]);
  const r = windowFrame(FRAME_RESIZE, 1e6, -3);
  assert.deepEqual([r[0], r.readUInt16LE(8), r.readUInt16LE(10)], [FRAME_RESIZE, 0xffff, 0], "out of range: clamped, or 0 (unknown)");
});

test("agent frames: read back whole however the bytes are cut; an oversized length is an error", () => {
  const exit = Buffer.alloc(4);
  exit.writeInt32LE(127);
  const stream = Buffer.concat([frame(FRAME_DATA, STREAM_STDOUT, Buffer.from("hello")), frame(FRAME_EXIT, 0, exit)]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const r = new FrameReader();
    const got = [...r.push(stream.subarray(0, cut)), ...r.push(stream.subarray(cut))];
    assert.deepEqual(got.map((f) => [f.type, f.stream, f.payload.toString("hex")]), [
      [FRAME_DATA, STREAM_STDOUT, Buffer.from("hello").toString("hex")], [FRAME_EXIT, 0, exit.toString("hex")],
    ]);
  }
  const huge = Buffer.alloc(FRAME_HEADER);
  huge[0] = FRAME_DATA;
  huge.writeUInt32LE(MAX_EXEC_BYTES + 1, 4);
  assert.throws(() => new FrameReader().push(huge), AgentProtocolError);
});

test("agent replies: output, exit status, error and anything else told apart", () => {
  const status = Buffer.alloc(4);
  status.writeInt32LE(137);
  const reply = (t: number, st: number, p: Buffer) => agentReply({ type: t, stream: st, payload: p });
  assert.deepEqual(reply(FRAME_DATA, STREAM_STDERR, Buffer.from("x")), { kind: "output", stream: STREAM_STDERR, payload: Buffer.from("x") });
  assert.deepEqual(reply(FRAME_EXIT, 0, status), { kind: "exit", status: 137 });
  assert.deepEqual(reply(FRAME_ERROR, 0, Buffer.from("bad frame")), { kind: "error", message: "bad frame" });
  assert.deepEqual(reply(FRAME_EXIT, 0, Buffer.alloc(3)), { kind: "unexpected", type: FRAME_EXIT, stream: 0 }, "a short status");
  assert.deepEqual(reply(FRAME_DATA, STREAM_STDIN, Buffer.from("x")), { kind: "unexpected", type: FRAME_DATA, stream: STREAM_STDIN }, "stdin is not the agent's to send");
});
