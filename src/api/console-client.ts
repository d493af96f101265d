// `tsvisor vm console NAME`: this terminal on a running VM's console, over
// the host's console stream (an HTTP upgrade). Keys go to the guest (raw
// mode on a terminal, as `run`), Ctrl-A X detaches and the VM runs on,
// Ctrl-A Ctrl-A sends Ctrl-A. Ends by itself when the VM stops.
import { request } from "node:http";
import type { Socket } from "node:net";
import { failureOf, unreachable } from "./client.js";
import { CONSOLE_PROTOCOL } from "./routes.js";
import { hostTarget } from "./auth.js";

const CTRL_A = 0x01;

export function attachConsole(socketPath: string, name: string, readOnly: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = hostTarget(socketPath);
    const req = request({
      ...target, method: "GET",
      path: `/v1/vms/${encodeURIComponent(name)}/console${readOnly ? "?write=false" : ""}`,
      headers: { ...target.headers, connection: "Upgrade", upgrade: CONSOLE_PROTOCOL },
    });
    req.on("error", (e: NodeJS.ErrnoException) => reject(unreachable(socketPath, e)));
    req.on("response", async (res) => reject(await failureOf(res)));
    req.on("upgrade", (res, socket: Socket, head: Buffer) => {
      const writes = res.headers["tsvisor-console-mode"] === "read-write";
      const stdin = process.stdin;
      const raw = stdin.isTTY === true;
      process.stderr.write(`tsvisor: attached to VM '${name}'${writes ? "" : " (read-only: another client types)"}; Ctrl-A X detaches${raw ? "\r\n" : "\n"}`);
      if (head.length) process.stdout.write(head);
      if (raw) stdin.setRawMode(true);
      let detached = false;
      let escape = false;
      const finish = (line: string) => {
        if (raw) stdin.setRawMode(false);
        stdin.off("data", onKeys);
        stdin.pause();
        process.stderr.write(`${raw ? "\r\n" : "\n"}tsvisor: ${line}\n`);
        resolve(0);
      };
      const onKeys = (chunk: Buffer) => {
        const out: number[] = [];
        for (const b of chunk) {
          if (escape) {
            escape = false;
            if (b === 0x78 || b === 0x58) {
              // Ctrl-A X
              if (writes && out.length) socket.write(Uint8Array.from(out));
              detached = true;
              socket.end();
              setTimeout(() => socket.destroy(), 1000).unref();
              return;
            }
            if (b !== CTRL_A) out.push(CTRL_A);
            out.push(b);
          } else if (b === CTRL_A) {
            escape = true;
          } else {
            out.push(b);
          }
        }
        if (writes && out.length) socket.write(Uint8Array.from(out));
      };
      stdin.on("data", onKeys);
      stdin.on("end", () => { /* a closed stdin sends nothing more; the console stays until the VM stops */ });
      socket.on("data", (d: Buffer) => process.stdout.write(d));
      socket.on("error", () => {});
      socket.on("close", () => finish(detached ? `detached from VM '${name}' (it runs on)` : `VM '${name}' stopped`));
    });
    req.end();
  });
}
