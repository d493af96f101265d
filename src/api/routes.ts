// The HTTP API's routes (/v1/...), described by openapi.json next to this
// file. Each handler gets the path parameters and the parsed JSON body and
// returns the status and JSON body, or takes the response over (streams).
import type { IncomingMessage, ServerResponse } from "node:http";
import { ApiError } from "./errors.js";
import type { Daemon } from "./daemon.js";
import { metricsText, OPENMETRICS_TYPE } from "./metrics.js";

export interface Ctx {
  daemon: Daemon;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  req: IncomingMessage;
  res: ServerResponse;
}

/** A JSON reply, or "streamed" when the handler wrote the response itself. */
export type Reply = { status: number; body: unknown } | "streamed";

export interface Route {
  method: "GET" | "POST" | "PATCH" | "DELETE";
  /** As in the OpenAPI document: /v1/vms/{name}. */
  path: string;
  /** Changes state: audited, and takes a JSON body (or none). */
  mutating: boolean;
  handler(ctx: Ctx): Promise<Reply> | Reply;
}

/** The Upgrade token of the console stream. */
export const CONSOLE_PROTOCOL = "tsvisor-console";

const ok = (body: unknown, status = 200): Reply => ({ status, body });

/** Action routes take no body but an empty object. */
function noFields(body: unknown): void {
  if (body === undefined) return;
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ApiError(400, "the body must be a JSON object");
  const keys = Object.keys(body);
  if (keys.length > 0) throw new ApiError(400, `unknown field '${keys[0]}' (this request takes none)`);
}

export const ROUTES: Route[] = [
  {
    method: "GET", path: "/metrics", mutating: false,
    handler: ({ daemon, res }) => {
      const text = metricsText(daemon);
      res.writeHead(200, { "content-type": OPENMETRICS_TYPE, "content-length": Buffer.byteLength(text) });
      res.end(text);
      return "streamed";
    },
  },
  { method: "GET", path: "/v1/host", mutating: false, handler: ({ daemon }) => ok(daemon.hostInfo()) },
  { method: "GET", path: "/v1/vms", mutating: false, handler: ({ daemon }) => ok({ vms: daemon.list().map((vm) => daemon.view(vm)) }) },
  {
    method: "POST", path: "/v1/vms", mutating: true,
    handler: ({ daemon, body }) => ok(daemon.view(daemon.create(body)), 201),
  },
  { method: "GET", path: "/v1/vms/{name}", mutating: false, handler: ({ daemon, params }) => ok(daemon.view(daemon.get(params.name))) },
  {
    method: "PATCH", path: "/v1/vms/{name}", mutating: true,
    handler: ({ daemon, params, body }) => {
      const vm = daemon.get(params.name);
      daemon.update(vm, body);
      return ok(daemon.view(vm));
    },
  },
  {
    method: "DELETE", path: "/v1/vms/{name}", mutating: true,
    handler: ({ daemon, params, body }) => {
      noFields(body);
      daemon.remove(daemon.get(params.name));
      return ok({ name: params.name, deleted: true });
    },
  },
  ...(["start", "pause", "resume", "stop"] as const).map((action): Route => ({
    method: "POST", path: `/v1/vms/{name}/${action}`, mutating: true,
    handler: async ({ daemon, params, body }) => {
      noFields(body);
      const vm = daemon.get(params.name);
      if (action === "start") await vm.start();
      else if (action === "pause") await vm.pause();
      else if (action === "resume") vm.resume();
      else await vm.stop("stopped through the API");
      return ok(daemon.view(vm));
    },
  })),
  {
    method: "POST", path: "/v1/vms/{name}/snapshot", mutating: true,
    handler: async ({ daemon, params, body }) => {
      const vm = daemon.get(params.name);
      return ok(await daemon.snapshot(vm, body));
    },
  },
  {
    method: "POST", path: "/v1/vms/{name}/migrate", mutating: true,
    handler: async ({ daemon, params, body }) => {
      const vm = daemon.get(params.name);
      return ok(await daemon.migrate(vm, body));
    },
  },
  { method: "GET", path: "/v1/vms/{name}/migration", mutating: false, handler: ({ daemon, params }) => ok(daemon.migrationStatus(params.name)) },
  {
    method: "POST", path: "/v1/restore", mutating: true,
    handler: async ({ daemon, body }) => ok(daemon.view(await daemon.restoreSnapshot(body)), 201),
  },
  { method: "GET", path: "/v1/vms/{name}/stats", mutating: false, handler: ({ daemon, params }) => ok({ name: params.name, ...daemon.get(params.name).stats() }) },
  {
    method: "GET", path: "/v1/vms/{name}/logs", mutating: false,
    handler: ({ daemon, params, query, res, req }) => {
      const vm = daemon.get(params.name);
      const follow = query.get("follow");
      if (follow !== null && follow !== "1" && follow !== "true" && follow !== "0" && follow !== "false") {
        throw new ApiError(400, `follow: expected true or false, got '${follow}'`);
      }
      const following = follow === "1" || follow === "true";
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.write(vm.log.contents());
      const live = vm.state === "starting" || vm.state === "running" || vm.state === "paused" || vm.state === "stopping";
      if (!following || !live) {
        res.end();
        return "streamed";
      }
      // Chunked until the run ends; a reader that stops reading is dropped
      // once a megabyte waits for it (the VM never waits for a viewer).
      const unfollow = vm.log.follow((chunk) => {
        if (chunk === null) return res.end();
        if (res.writableLength > 1 << 20) {
          unfollow();
          res.destroy();
          return;
        }
        res.write(chunk);
      });
      req.socket.on("close", unfollow);
      return "streamed";
    },
  },
  {
    // The stream itself is an HTTP upgrade (server.ts); a plain GET is told so.
    method: "GET", path: "/v1/vms/{name}/console", mutating: false,
    handler: ({ daemon, params }) => {
      daemon.get(params.name);
      throw new ApiError(426, `the console is a byte stream: ask with 'Connection: Upgrade' and 'Upgrade: ${CONSOLE_PROTOCOL}'`);
    },
  },
  {
    // A session with the guest agent is an HTTP upgrade (server.ts, exec-proxy.ts); a plain POST is told so.
    method: "POST", path: "/v1/vms/{name}/exec", mutating: true,
    handler: ({ daemon, params }) => {
      daemon.get(params.name);
      throw new ApiError(426, "exec is a byte stream (the guest agent's frames): ask with 'Connection: Upgrade' and 'Upgrade: tsvisor-exec'");
    },
  },
  {
    method: "GET", path: "/v1/vms/{name}/wait", mutating: false,
    handler: async ({ daemon, params }) => {
      const outcome = await daemon.get(params.name).waitForEnd();
      return ok({ name: params.name, ...outcome });
    },
  },
];

/** The route for a method and path, with its parameters; 404 or 405 when none fits. */
export function match(method: string, pathname: string): { route: Route; params: Record<string, string> } {
  let pathFits = false;
  for (const route of ROUTES) {
    const params = matchPath(route.path, pathname);
    if (!params) continue;
    pathFits = true;
    if (route.method === method) return { route, params };
  }
  if (pathFits) throw new ApiError(405, `${method} is not allowed on ${pathname}`);
  throw new ApiError(404, `no such API path: ${pathname}`);
}

function matchPath(template: string, pathname: string): Record<string, string> | undefined {
  const t = template.split("/");
  const p = pathname.split("/");
  if (t.length !== p.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < t.length; i++) {
    const m = /^\{(\w+)\}$/.exec(t[i]);
    if (m) {
      let value: string;
      try {
        value = decodeURIComponent(p[i]);
      } catch {
        return undefined;
      }
      params[m[1]] = value;
    } else if (t[i] !== p[i]) {
      return undefined;
    }
  }
  return params;
}
