// For the control plane's tests: a real `tsvisor host` daemon spawned from
// bin/tsvisor.js, raw HTTP requests to its socket, and `tsvisor vm` commands.
import { spawn, type ChildProcess } from "node:child_process";
import { request } from "node:http";
import { join } from "node:path";
import { bin, tsvisor, type Run } from "../cli/test-tsvisor.js";

export class TestHost {
  stderr = "";
  readonly exited: Promise<number | null>;

  private constructor(readonly proc: ChildProcess, readonly socket: string) {
    proc.stderr!.on("data", (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => proc.on("close", (code) => resolve(code)));
  }

  /** Starts a host and waits until it listens (or ends: then `exited` says how). */
  static async start(dir: string, args: string[] = ["--pcpus", "1", "--mem", "1G"], opts: { env?: NodeJS.ProcessEnv; socket?: string } = {}): Promise<TestHost> {
    const env = opts.env ?? process.env;
    const socket = opts.socket ?? join(dir, "host.sock");
    const all = ["host", ...(opts.socket ? [] : ["--socket", socket]), "--state-dir", join(dir, "state"), ...args];
    const proc = spawn(process.execPath, [bin, ...all], { stdio: ["ignore", "ignore", "pipe"], env });
    const host = new TestHost(proc, socket);
    await Promise.race([host.exited, host.waitFor(/host listening/)]);
    return host;
  }

  /** Resolves once stderr matches `re` (polling; rejects after `ms`). */
  async waitFor(re: RegExp, ms = 30_000): Promise<void> {
    const until = Date.now() + ms;
    while (!re.test(this.stderr)) {
      if (Date.now() > until) throw new Error(`host log never matched ${re}:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    if (this.proc.exitCode === null) this.proc.kill(signal);
    return this.exited;
  }

  /** `tsvisor ARGS --host SOCKET` */
  vm(...args: string[]): Promise<Run> {
    const dashes = args.indexOf("--");
    const withHost = dashes < 0 ? [...args, "--host", this.socket] : [...args.slice(0, dashes), "--host", this.socket, ...args.slice(dashes)];
    return tsvisor(["vm", ...withHost]);
  }

  api(method: string, path: string, body?: unknown): Promise<{ status: number; json: any; text: string }> {
    return rawApi(this.socket, method, path, body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body));
  }
}

/** One request with a body sent as given; the reply parsed as JSON when it is. */
export function rawApi(socket: string, method: string, path: string, body?: string | Buffer): Promise<{ status: number; json: any; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, json, text });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}
