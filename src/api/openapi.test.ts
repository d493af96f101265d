// The OpenAPI document (openapi.json) against the real server, both ways:
// every route the server has is documented and no other path or method
// answers; every documented operation answers with a documented status, and
// its JSON body has the documented shape (required fields, types, enums).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { ROUTES } from "./routes.js";
import { TestHost } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const doc = JSON.parse(readFileSync(join(root, "src", "api", "openapi.json"), "utf8"));
const dir = mkdtempSync(join(tmpdir(), "tsvisor-openapi-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const METHODS = ["get", "post", "put", "patch", "delete"];

type Schema = Record<string, any>;

/** Checks `value` against `schema` (the subset openapi.json uses); returns what is wrong. */
function check(value: unknown, schema: Schema, at = "body"): string[] {
  if (schema.$ref) return check(value, doc.components.schemas[schema.$ref.replace("#/components/schemas/", "")], at);
  const errors: string[] = [];
  const type = schema.type;
  const actual = Array.isArray(value) ? "array" : value === null ? "null" : Number.isInteger(value) ? "integer" : typeof value;
  if (type && !(type === actual || (type === "number" && actual === "integer"))) return [`${at}: expected ${type}, got ${actual}`];
  if (schema.enum && !schema.enum.includes(value)) errors.push(`${at}: ${JSON.stringify(value)} is not one of ${schema.enum.join(", ")}`);
  if (type === "object") {
    const obj = value as Record<string, unknown>;
    for (const key of schema.required ?? []) if (!(key in obj)) errors.push(`${at}: no required field '${key}'`);
    for (const [key, v] of Object.entries(obj)) {
      const sub = schema.properties?.[key] ?? (typeof schema.additionalProperties === "object" ? schema.additionalProperties : undefined);
      if (sub) errors.push(...check(v, sub, `${at}.${key}`));
      else if (schema.additionalProperties === false || schema.properties) errors.push(`${at}: field '${key}' is not documented`);
    }
  }
  if (type === "array") (value as unknown[]).forEach((v, i) => errors.push(...check(v, schema.items, `${at}[${i}]`)));
  return errors;
}

test("every route the server has is in the document, and the document has no other", () => {
  const server = ROUTES.map((r) => `${r.method} ${r.path}`).sort();
  const documented = Object.entries(doc.paths).flatMap(([path, item]) => Object.keys(item as object).filter((m) => METHODS.includes(m)).map((m) => `${m.toUpperCase()} ${path}`)).sort();
  assert.deepEqual(server, documented);
});

test("the server answers as documented: statuses and bodies, and nothing undocumented answers", { skip }, async () => {
  buildBareKernel(bareProgram("halt"));
  const host = await TestHost.start(dir);
  const seen = new Set<string>();
  /** A request of a documented operation: the status must be documented, the JSON body of its schema. */
  async function call(method: string, template: string, name: string | undefined, body?: unknown, query = "") {
    const path = template.replace("{name}", encodeURIComponent(name ?? ""));
    const r = await host.api(method, path + query, body);
    const op = doc.paths[template]?.[method.toLowerCase()];
    assert.ok(op, `${method} ${template} is documented`);
    const response = op.responses[String(r.status)];
    assert.ok(response, `${method} ${path}: status ${r.status} is not documented (${r.text})`);
    const media = response.content?.["application/json"];
    if (media) {
      assert.notEqual(r.json, undefined, `${method} ${path}: not JSON: ${r.text}`);
      assert.deepEqual(check(r.json, media.schema), [], `${method} ${path} -> ${r.status}: ${r.text}`);
    }
    seen.add(`${method} ${template} ${r.status}`);
    return r;
  }
  try {
    const vm = { name: "v", kernel: join(root, "build", "bare", "halt.Image"), append: "", memBytes: 64 << 20, cpus: 2, command: ["unused"] };
    await call("GET", "/v1/host", undefined);
    assert.equal((await call("POST", "/v1/vms", undefined, { ...vm, command: undefined, name: "v" })).status, 201);
    await call("POST", "/v1/vms", undefined, vm);
    await call("POST", "/v1/vms", undefined, { name: "" });
    await call("POST", "/v1/vms", undefined, "x".repeat(70_000));
    await call("GET", "/v1/vms", undefined);
    await call("GET", "/v1/vms/{name}/wait", "v");
    await call("POST", "/v1/vms/{name}/start", "v");
    await host.waitFor(/vm v running/);
    await call("GET", "/v1/vms/{name}", "v");
    await call("PATCH", "/v1/vms/{name}", "v", { weight: 10, capPct: 50, affinity: [0] });
    await call("PATCH", "/v1/vms/{name}", "v", { balloonBytes: 4 << 20 });
    await call("GET", "/v1/host", undefined); // with a running VM's memory
    await call("GET", "/v1/vms/{name}/stats", "v");
    await call("GET", "/v1/vms/{name}/logs", "v");
    await call("GET", "/metrics", undefined);
    await call("GET", "/v1/vms/{name}/console", "v"); // 426: the stream is an upgrade (console.test.ts)
    await call("POST", "/v1/vms/{name}/exec", "v"); // 426: the session is an upgrade (exec-linux.test.ts)
    await call("POST", "/v1/vms/{name}/pause", "v");
    await call("POST", "/v1/vms/{name}/resume", "v");
    // Snapshots: written (200), a bad body (400), a file that cannot be written (422);
    // restored under another name (201), again (409), a file that is none (422).
    const snap = join(dir, "v.snap");
    await call("POST", "/v1/vms/{name}/snapshot", "v", { path: snap, stayPaused: true });
    await call("POST", "/v1/vms/{name}/snapshot", "v", { path: "v.snap" });
    await call("POST", "/v1/vms/{name}/snapshot", "v", { path: join(dir, "no-such-dir", "v.snap") });
    const restored = await call("POST", "/v1/restore", undefined, { path: snap, name: "w", paused: true });
    assert.equal(restored.status, 201, restored.text);
    assert.equal((await call("POST", "/v1/restore", undefined, { path: snap, name: "w" })).status, 409);
    assert.equal((await call("POST", "/v1/restore", undefined, { path: join(dir, "none.snap") })).status, 422);
    await call("POST", "/v1/restore", undefined, { path: 1 });
    // Migration to a second host (migrate-api.test.ts has more): a bad body (400), migrated (200),
    // not running (409), refused by the target (502).
    const target = await TestHost.start(join(dir, "target"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", "openapi-token"]);
    try {
      const to = /taking migrated VMs on (\S+)/.exec(target.stderr)![1];
      await call("POST", "/v1/vms/{name}/migrate", "w", { to });
      assert.equal((await call("GET", "/v1/vms/{name}/migration", "w")).status, 404); // never migrated
      assert.equal((await call("POST", "/v1/vms/{name}/migrate", "w", { to, token: "wrong-token" })).status, 502);
      assert.equal((await call("GET", "/v1/vms/{name}/migration", "w")).json.state, "failed");
      const moved = await call("POST", "/v1/vms/{name}/migrate", "w", { to, token: "openapi-token", maxDowntimeMs: 1000 });
      assert.equal(moved.status, 200, moved.text);
      assert.equal((await call("GET", "/v1/vms/{name}/migration", "w")).json.state, "completed"); // gone, its migration answers
      await call("POST", "/v1/restore", undefined, { path: snap, name: "w", paused: true });
    } finally {
      assert.equal(await target.stop(), 0);
    }
    await call("POST", "/v1/vms/{name}/stop", "w");
    await call("POST", "/v1/vms/{name}/migrate", "w", { to: "127.0.0.1:1", token: "openapi-token" }); // 409: stopped
    await call("POST", "/v1/vms/{name}/snapshot", "w", { path: snap }); // 409: stopped
    await call("DELETE", "/v1/vms/{name}", "w");
    await call("POST", "/v1/vms/{name}/resume", "v");
    await call("DELETE", "/v1/vms/{name}", "v");
    const waiting = call("GET", "/v1/vms/{name}/wait", "v");
    await call("POST", "/v1/vms/{name}/stop", "v");
    assert.equal((await waiting).status, 200);
    await call("GET", "/v1/vms/{name}/stats", "v");
    await call("GET", "/v1/vms/{name}", "v");
    await call("POST", "/v1/vms/{name}/pause", "v");
    await call("PATCH", "/v1/vms/{name}", "v", { balloonBytes: 0 }); // 409: not running
    await call("DELETE", "/v1/vms/{name}", "v");
    // Every operation on a VM: an unknown name (404), a bad one (400).
    for (const route of ROUTES.filter((r) => r.path.includes("{name}"))) {
      assert.equal((await call(route.method, route.path, "nobody", route.method === "PATCH" ? {} : undefined)).status, 404);
      assert.equal((await call(route.method, route.path, "x".repeat(64), route.method === "PATCH" ? {} : undefined)).status, 400);
    }
    await call("GET", "/v1/vms/{name}/logs", "nobody", undefined, "?follow=sometimes");

    // Every documented operation was answered at least once.
    for (const r of ROUTES.filter((r) => !r.path.endsWith("/console") && !r.path.endsWith("/exec"))) assert.ok([...seen].some((s) => s.startsWith(`${r.method} ${r.path} 2`)), `${r.method} ${r.path} never succeeded`);

    // Nothing undocumented answers: other methods on documented paths (405), other paths (404).
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const m of METHODS.filter((m) => !(m in (item as object)))) {
        const r = await host.api(m.toUpperCase(), path.replace("{name}", "v"));
        assert.equal(r.status, 405, `${m} ${path}`);
      }
    }
    for (const path of ["/", "/v1", "/v2/vms", "/v1/metrics", "/metrics/x", "/v1/vms/v/start/now", "/v1/host/x"]) {
      for (const m of METHODS) assert.equal((await host.api(m.toUpperCase(), path)).status, 404, `${m} ${path}`);
    }
  } finally {
    assert.equal(await host.stop(), 0);
  }
});

test("the schema checker finds what is wrong", () => {
  assert.deepEqual(check({ error: "x" }, { $ref: "#/components/schemas/Error" }), []);
  assert.equal(check({}, { $ref: "#/components/schemas/Error" }).length, 1);
  assert.equal(check({ error: 1 }, { $ref: "#/components/schemas/Error" }).length, 1);
  assert.equal(check({ name: "v", deleted: true, extra: 1 }, { $ref: "#/components/schemas/Deleted" }).length, 1);
  assert.equal(check("paused", { $ref: "#/components/schemas/VmState" }).length, 0);
  assert.equal(check("asleep", { $ref: "#/components/schemas/VmState" }).length, 1);
});
