// The host's half of the guest agent's protocol (agent/agent.c says it all):
// frames of type u8, stream u8, reserved u16, length u32 little-endian, then
// the payload. One session a connection (vsock port 52): ENV, CWD and TTY
// when asked for, EXEC, then stdin DATA, RESIZE and EOF one way,
// stdout/stderr DATA and finally EXIT the other.

export const FRAME_HEADER = 8;
export const FRAME_EXEC = 1;
export const FRAME_DATA = 2;
export const FRAME_EOF = 3;
export const FRAME_EXIT = 4;
export const FRAME_ERROR = 5;
export const FRAME_ENV = 6;
export const FRAME_CWD = 7;
export const FRAME_TTY = 8;
export const FRAME_RESIZE = 9;

export const STREAM_STDIN = 0;
export const STREAM_STDOUT = 1;
export const STREAM_STDERR = 2;

/** The agent's bounds: argv at most 1 MiB, a DATA payload at most 64 KiB. */
export const MAX_EXEC_BYTES = 1 << 20;
export const MAX_DATA_BYTES = 64 << 10;

export class AgentProtocolError extends Error {}

export function frame(type: number, stream: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.alloc(FRAME_HEADER + payload.length);
  b[0] = type;
  b[1] = stream;
  b.writeUInt32LE(payload.length, 4);
  b.set(payload, FRAME_HEADER);
  return b;
}

/** EXEC: the words NUL-terminated (a word may not hold a NUL). */
export function execFrame(argv: string[]): Buffer {
  if (argv.length === 0) throw new AgentProtocolError("no command");
  if (argv.some((w) => w.includes("\0"))) throw new AgentProtocolError("a command word holds a NUL byte");
  const payload = Buffer.from(argv.map((w) => `${w}\0`).join(""), "utf8");
  if (payload.length > MAX_EXEC_BYTES) throw new AgentProtocolError(`the command is longer than ${MAX_EXEC_BYTES} bytes`);
  return frame(FRAME_EXEC, 0, payload);
}

/** ENV: entries NAME=VALUE added to the command's environment (NAME not empty, no NUL anywhere). */
export function envFrame(entries: string[]): Buffer {
  for (const e of entries) {
    if (e.includes("\0")) throw new AgentProtocolError("an environment entry holds a NUL byte");
    if (e.indexOf("=") < 1) throw new AgentProtocolError(`environment entry '${e}': expected NAME=VALUE`);
  }
  const payload = Buffer.from(entries.map((e) => `${e}\0`).join(""), "utf8");
  if (payload.length > MAX_EXEC_BYTES) throw new AgentProtocolError(`the environment is longer than ${MAX_EXEC_BYTES} bytes`);
  return frame(FRAME_ENV, 0, payload);
}

/** CWD: the directory the command starts in (absolute, as `docker exec -w` wants it). */
export function cwdFrame(dir: string): Buffer {
  if (!dir.startsWith("/") || dir.includes("\0")) throw new AgentProtocolError(`working directory '${dir}': expected an absolute path`);
  const payload = Buffer.from(`${dir}\0`, "utf8");
  if (payload.length > MAX_EXEC_BYTES) throw new AgentProtocolError(`the working directory is longer than ${MAX_EXEC_BYTES} bytes`);
  return frame(FRAME_CWD, 0, payload);
}

/** TTY (before EXEC: the command gets a pseudo-terminal of this size) or RESIZE (after: it changed). */
export function windowFrame(type: typeof FRAME_TTY | typeof FRAME_RESIZE, rows: number, columns: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt16LE(clampSize(rows), 0);
  payload.writeUInt16LE(clampSize(columns), 2);
  return frame(type, 0, payload);
}

const clampSize = (n: number) => (Number.isInteger(n) && n > 0 ? Math.min(n, 0xffff) : 0);

/** stdin bytes as DATA frames of at most MAX_DATA_BYTES. */
export function stdinFrames(data: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += MAX_DATA_BYTES) out.push(frame(FRAME_DATA, STREAM_STDIN, data.subarray(at, at + MAX_DATA_BYTES)));
  return out;
}

export interface Frame {
  type: number;
  stream: number;
  payload: Buffer;
}

/** What a frame from the agent means to a client. */
export type AgentReply =
  | { kind: "output"; stream: typeof STREAM_STDOUT | typeof STREAM_STDERR; payload: Buffer }
  | { kind: "exit"; status: number }
  | { kind: "error"; message: string }
  | { kind: "unexpected"; type: number; stream: number };

/** A frame the agent sent, told apart (a client acts on these only). */
export function agentReply(f: Frame): AgentReply {
  if (f.type === FRAME_DATA && (f.stream === STREAM_STDOUT || f.stream === STREAM_STDERR)) return { kind: "output", stream: f.stream, payload: f.payload };
  if (f.type === FRAME_EXIT && f.payload.length === 4) return { kind: "exit", status: f.payload.readInt32LE(0) };
  if (f.type === FRAME_ERROR) return { kind: "error", message: f.payload.toString("utf8") };
  return { kind: "unexpected", type: f.type, stream: f.stream };
}

/** Frames out of a byte stream, as they complete; a frame past the bounds is a protocol error. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Frame[] = [];
    while (this.buf.length >= FRAME_HEADER) {
      const len = this.buf.readUInt32LE(4);
      if (len > MAX_EXEC_BYTES) throw new AgentProtocolError(`a frame of ${len} bytes`);
      if (this.buf.length < FRAME_HEADER + len) break;
      out.push({ type: this.buf[0], stream: this.buf[1], payload: this.buf.subarray(FRAME_HEADER, FRAME_HEADER + len) });
      this.buf = this.buf.subarray(FRAME_HEADER + len);
    }
    return out;
  }
}
