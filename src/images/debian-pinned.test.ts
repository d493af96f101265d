import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { downloadPinned, type PinnedPackage } from "./debian-pinned.js";
import { isIndexMismatch } from "./apt.js";
import { ImageError } from "./errors.js";

const body = Buffer.from("a .deb stand-in: the bytes a pin names\n".repeat(100));
const pin: PinnedPackage = {
  name: "demo", version: "1", filename: "pool/main/d/demo/demo_1_riscv64.deb", size: body.length,
  sha256: createHash("sha256").update(body).digest("hex"), depends: [],
};

async function withMirror(serve: Buffer, fn: (mirror: string, dir: string) => Promise<void>): Promise<void> {
  const server: Server = createServer((req, res) => {
    if (req.url === `/debian/${pin.filename}`) res.end(serve);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-pin-"));
  try {
    await fn(`http://127.0.0.1:${(server.address() as { port: number }).port}/debian`, dir);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test("a pinned package is fetched from the pool and checked", async () => {
  await withMirror(body, async (mirror, dir) => {
    const path = await downloadPinned(mirror, pin, dir, () => {});
    assert.deepEqual(readFileSync(path), body);
  });
});

test("a file that differs from the pin is refused and removed", async () => {
  const tampered = Buffer.from(body);
  tampered[10] ^= 1;
  await withMirror(tampered, async (mirror, dir) => {
    await assert.rejects(downloadPinned(mirror, pin, dir, () => {}), (e: unknown) => e instanceof ImageError && /SHA256 [0-9a-f]{64}, pinned/.test(e.message));
    assert.deepEqual(readdirSync(dir), []);
  });
  await withMirror(body.subarray(1), async (mirror, dir) => {
    await assert.rejects(downloadPinned(mirror, pin, dir, () => {}), /bytes, pinned/);
  });
});

test("a version gone from the pool says the pin is out of date", async () => {
  await withMirror(body, async (mirror, dir) => {
    await assert.rejects(downloadPinned(mirror, { ...pin, filename: "pool/main/d/demo/demo_0_riscv64.deb" }, dir, () => {}), /HTTP 404 .*pinned packages are out of date/);
  });
});

test("only lists that contradict the signed Release fall back to the pin", () => {
  assert.equal(isIndexMismatch("apt-get update failed: Failed to fetch http://x/Packages.xz  File has unexpected size (9385284 != 9387120). Mirror sync in progress? [IP: 1.2.3.4 80]"), true);
  assert.equal(isIndexMismatch("apt-get update failed: Failed to fetch http://127.0.0.1:9/debian/dists/trixie/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)"), false);
});
