// `tsvisor vm exec NAME [-t] [-e NAME=VALUE]... [-w DIR] [--] CMD ARGS...`:
// a command in a running VM through its guest agent (POST
// /v1/vms/{name}/exec, an HTTP upgrade; exec-proxy.ts on the host,
// images/agent/agent.c in the guest). Local stdin goes to the command, its
// stdout and stderr to ours, and we exit with its status. With -t the
// command gets a pseudo-terminal of our terminal's size (followed as it
// changes) and our terminal goes raw meanwhile, as `docker exec -it` does.
import { request } from "node:http";
import type { Socket } from "node:net";
import { failureOf, unreachable } from "./client.js";
import { hostTarget } from "./auth.js";
import { EXEC_PROTOCOL } from "./exec-proxy.js";
import {
  FRAME_EOF, FrameReader, STREAM_STDIN, STREAM_STDOUT,
  FRAME_RESIZE, FRAME_TTY, agentReply, cwdFrame, envFrame, execFrame, frame, stdinFrames, windowFrame, AgentProtocolError,
} from "../images/agent-protocol.js";

/** What ends a session without an exit status: as ssh does, 255. */
export const EXEC_FAILED = 255;

export interface ExecIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(raw: boolean): unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean; rows?: number; columns?: number; on(event: "resize", l: () => void): unknown; off(event: "resize", l: () => void): unknown };
  stderr: NodeJS.WritableStream;
}

export interface ExecOptions {
  /** NAME=VALUE entries added to the command's environment. */
  env?: string[];
  /** The directory the command starts in (absolute; default the agent's, /root). */
  cwd?: string;
  /** A pseudo-terminal for the command, of our stdout's size (24x80 when it is no terminal). */
  tty?: boolean;
}

/** A command on a terminal learns its kind from TERM: ours (xterm when we have none), unless the caller set one, as `docker exec -t` does. */
function withTerm(env: string[]): string[] {
  return env.some((e) => e.startsWith("TERM=")) ? env : [`TERM=${process.env.TERM || "xterm"}`, ...env];
}

/** Our terminal's size, as the command's pseudo-terminal gets it. */
function windowOf(out: ExecIo["stdout"]): { rows: number; columns: number } {
  return out.isTTY && out.rows && out.columns ? { rows: out.rows, columns: out.columns } : { rows: 24, columns: 80 };
}

export function execInVm(socketPath: string, name: string, argv: string[], io: ExecIo = process, opts: ExecOptions = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = hostTarget(socketPath);
    const req = request({
      ...target, method: "POST",
      path: `/v1/vms/${encodeURIComponent(name)}/exec`,
      headers: { ...target.headers, connection: "Upgrade", upgrade: EXEC_PROTOCOL },
    });
    req.on("error", (e: NodeJS.ErrnoException) => reject(unreachable(socketPath, e)));
    req.on("response", async (res) => reject(await failureOf(res)));
    req.on("upgrade", (_res, socket: Socket, head: Buffer) => {
      const reader = new FrameReader();
      let ended = false;
      let sentSetup = false;
      // Raw: every key goes to the guest's terminal, which does the echo and the line editing.
      const raw = opts.tty === true && io.stdin.isTTY === true && typeof io.stdin.setRawMode === "function";
      const onResize = () => {
        const w = windowOf(io.stdout);
        socket.write(windowFrame(FRAME_RESIZE, w.rows, w.columns));
      };
      const finish = (status: number, line?: string) => {
        if (ended) return;
        ended = true;
        io.stdin.removeListener("data", onStdin);
        io.stdin.removeListener("end", onStdinEnd);
        io.stdin.pause();
        if (opts.tty) io.stdout.off("resize", onResize);
        if (raw) io.stdin.setRawMode!(false);
        if (line) io.stderr.write(`tsvisor: ${line}\n`);
        socket.destroy();
        // Our stdout and stderr written out before the status is known to the caller.
        let left = 2;
        const done = () => --left === 0 && resolve(status);
        io.stdout.write("", done);
        io.stderr.write("", done);
      };
      const onFrames = (chunk: Buffer) => {
        let frames;
        try {
          frames = reader.push(chunk);
        } catch (e) {
          if (!(e instanceof AgentProtocolError)) throw e;
          return finish(EXEC_FAILED, `the guest agent sent a bad frame: ${e.message}`);
        }
        for (const f of frames) {
          const r = agentReply(f);
          if (r.kind === "output") {
            const out = r.stream === STREAM_STDOUT ? io.stdout : io.stderr;
            // The guest waits while our output does not drain.
            if (!out.write(r.payload)) {
              socket.pause();
              out.once("drain", () => socket.resume());
            }
          } else if (r.kind === "exit") {
            return finish(r.status & 0xff);
          } else if (r.kind === "error") {
            // An agent from before ENV/CWD/TTY frames (a VM restored from an older
            // snapshot keeps the agent in its RAM) refuses them with this message.
            const old = sentSetup && r.message === "expected an EXEC frame first"
              ? " (this VM's guest agent predates -e, -w and -t: it came from an older snapshot; restart the VM to get the new agent)" : "";
            return finish(EXEC_FAILED, `the guest agent: ${r.message}${old}`);
          } else {
            return finish(EXEC_FAILED, `the guest agent sent an unknown frame (type ${r.type})`);
          }
        }
      };
      const onStdin = (d: Buffer) => {
        for (const f of stdinFrames(d)) {
          if (!socket.write(f)) {
            io.stdin.pause();
            socket.once("drain", () => io.stdin.resume());
          }
        }
      };
      const onStdinEnd = () => socket.write(frame(FRAME_EOF, STREAM_STDIN));
      socket.on("data", onFrames);
      socket.on("error", () => {});
      socket.on("close", () => finish(EXEC_FAILED, `VM '${name}': the session ended without an exit status (the VM stopped?)`));
      try {
        // Built before anything is sent: a bad entry ends the session with nothing started.
        const w = windowOf(io.stdout);
        const env = opts.tty ? withTerm(opts.env ?? []) : opts.env ?? [];
        const first = [
          ...(env.length ? [envFrame(env)] : []), ...(opts.cwd !== undefined ? [cwdFrame(opts.cwd)] : []),
          ...(opts.tty ? [windowFrame(FRAME_TTY, w.rows, w.columns)] : []), execFrame(argv),
        ];
        sentSetup = first.length > 1;
        socket.write(Buffer.concat(first));
      } catch (e) {
        return finish(EXEC_FAILED, (e as Error).message);
      }
      if (opts.tty) io.stdout.on("resize", onResize);
      if (raw) io.stdin.setRawMode!(true);
      if (head.length) onFrames(head);
      io.stdin.on("data", onStdin);
      io.stdin.on("end", onStdinEnd);
      io.stdin.resume();
    });
    req.end();
  });
}
