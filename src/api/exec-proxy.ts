// The daemon's half of `tsvisor vm exec` (POST /v1/vms/{name}/exec with
// Upgrade: tsvisor-exec): it reaches the guest agent through the VM's vsock
// Unix socket, Firecracker's way (`CONNECT 52\n`, answered `OK <port>\n`),
// answers 101 and then only copies bytes both ways. The agent's framed
// protocol (images/agent-protocol.ts) runs end to end between the client and
// the agent, so the daemon holds no session state and a session ends when
// either side closes.
import net from "node:net";
import type { Duplex } from "node:stream";
import { AGENT_PORT } from "../images/agent.js";
import { ApiError } from "./errors.js";

export const EXEC_PROTOCOL = "tsvisor-exec";
/** How long the agent has to accept (the device itself gives the guest 2 s). */
const CONNECT_TIMEOUT_MS = 5000;

/** A connection to the guest agent of the VM whose vsock socket is `path`, past the OK line. */
export function connectAgent(path: string, name: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path, allowHalfOpen: true });
    let line = Buffer.alloc(0);
    let done = false;
    const fail = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      reject(new ApiError(502, `VM '${name}': ${why}`));
    };
    const noAgent = "the guest agent does not answer on vsock port 52 (the guest is still booting, " +
      "or its initramfs has no agent: an image built without riscv64-linux-gnu-gcc, or a kernel/initrd of its own)";
    const timer = setTimeout(() => fail(noAgent), CONNECT_TIMEOUT_MS);
    s.on("connect", () => s.write(`CONNECT ${AGENT_PORT}\n`));
    s.on("error", (e) => fail(`its vsock socket ${path}: ${e.message}`));
    s.on("close", () => fail(noAgent));
    const onData = (d: Buffer) => {
      line = Buffer.concat([line, d]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > 64) fail("the vsock socket answered CONNECT with something else than OK");
        return;
      }
      if (!/^OK \d+$/.test(line.subarray(0, nl).toString("latin1"))) return fail("the vsock socket answered CONNECT with something else than OK");
      done = true;
      clearTimeout(timer);
      s.off("data", onData);
      s.pause();
      s.removeAllListeners("close");
      s.removeAllListeners("error");
      const rest = line.subarray(nl + 1);
      if (rest.length) s.unshift(rest);
      resolve(s);
    };
    s.on("data", onData);
  });
}

/** Copy bytes both ways until either side ends; each side's end ends the other. */
export function splice(client: Duplex, agent: net.Socket): void {
  client.on("error", () => agent.destroy());
  agent.on("error", () => client.destroy());
  client.pipe(agent);
  agent.pipe(client);
  client.on("close", () => agent.destroy());
  agent.on("close", () => client.destroy());
}
