// A command the daemon itself runs in a guest through its agent (the same
// agent and frames as `tsvisor vm exec`: images/agent-protocol.ts), with no
// stdin and its output collected: how the host tells a running guest what it
// cannot learn from a device (a clone's new MAC addresses: clone-macs.ts).
import { connectAgent } from "./exec-proxy.js";
import {
  FRAME_EOF, FrameReader, STREAM_STDIN, STREAM_STDOUT,
  AgentProtocolError, agentReply, execFrame, frame,
} from "../images/agent-protocol.js";

export interface GuestCommandResult {
  /** The exit status (128+N for signal N, as the agent reports it). */
  status: number;
  stdout: string;
  stderr: string;
}

/** Output kept of each stream: what is past it is dropped (the callers want a line or two). */
const MAX_OUTPUT = 64 << 10;

/**
 * Run `argv` in the guest whose vsock Unix socket is `vsockPath`. Rejects
 * (one line) when the agent does not answer, breaks the protocol, or the
 * command has not ended within `timeoutMs` (the session is then closed,
 * which makes the agent kill the command).
 */
export async function runInGuest(vsockPath: string, vmName: string, argv: string[], timeoutMs: number): Promise<GuestCommandResult> {
  const sock = await connectAgent(vsockPath, vmName);
  return new Promise((resolve, reject) => {
    const reader = new FrameReader();
    const out = { stdout: "", stderr: "" };
    let settled = false;
    const end = (why: string | GuestCommandResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (typeof why === "string") reject(new Error(`VM '${vmName}': ${why}`));
      else resolve(why);
    };
    const timer = setTimeout(() => end(`the guest command '${argv.join(" ")}' did not end within ${timeoutMs} ms`), timeoutMs);
    sock.on("data", (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (e) {
        if (!(e instanceof AgentProtocolError)) throw e;
        return end(`the guest agent sent a bad frame: ${e.message}`);
      }
      for (const f of frames) {
        const r = agentReply(f);
        if (r.kind === "output") {
          const key = r.stream === STREAM_STDOUT ? "stdout" : "stderr";
          if (out[key].length < MAX_OUTPUT) out[key] += r.payload.toString("utf8");
        } else if (r.kind === "exit") {
          return end({ status: r.status, ...out });
        } else if (r.kind === "error") {
          return end(`the guest agent: ${r.message.split("\n")[0]}`);
        } else {
          return end(`the guest agent sent an unexpected frame (type ${r.type}, stream ${r.stream})`);
        }
      }
    });
    sock.on("error", (e) => end(`the guest agent's connection: ${e.message}`));
    sock.on("close", () => end("the guest agent closed the session before the command's exit status"));
    sock.write(execFrame(argv));
    sock.write(frame(FRAME_EOF, STREAM_STDIN));
    sock.resume();
  });
}
