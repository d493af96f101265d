import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import {
  INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, checkCachedImage, defaultCacheDir, makeBuildDir, makeDirectories, publishImage,
  removeAbandonedBuilds, sha256, type ImageManifest,
} from "./image-cache.js";

const RECIPE = "r1";

async function withCache(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-cache-test-"));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** An image directory with this kernel and initrd content and a matching manifest. */
function writeImage(dir: string, kernel: string, initrd: string, recipe = RECIPE): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, KERNEL_FILE), kernel);
  writeFileSync(join(dir, INITRD_FILE), initrd);
  const file = (s: string) => ({ sha256: sha256(new TextEncoder().encode(s)), size: s.length });
  const manifest: ImageManifest = {
    format: 1, recipe,
    source: { mirror: "m", suite: "s", arch: "riscv64" },
    kernel: { package: "linux-image-x", version: "1", kernelVersion: "6.0-x" },
    busybox: { package: "busybox-static", version: "1" },
    files: { [KERNEL_FILE]: file(kernel), [INITRD_FILE]: file(initrd) },
    modules: [],
  };
  writeFileSync(join(dir, MANIFEST_FILE), JSON.stringify(manifest));
}

test("the cache directory: $TSVISOR_CACHE, then $XDG_CACHE_HOME/tsvisor, then ~/.cache/tsvisor", () => {
  assert.equal(defaultCacheDir({ TSVISOR_CACHE: "/c", XDG_CACHE_HOME: "/x" }), "/c");
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: "/x" }), "/x/tsvisor");
  assert.equal(defaultCacheDir({}), join(homedir(), ".cache", "tsvisor"));
});

test("a cached image is accepted only whole, matching its manifest and recipe", async () => {
  await withCache(async (cache) => {
    const dir = join(cache, "img");
    assert.deepEqual(await checkCachedImage(dir, RECIPE), { ok: false, reason: "no manifest.json", exists: false });
    writeImage(dir, "kernel", "initrd");
    const good = await checkCachedImage(dir, RECIPE);
    assert.ok(good.ok && good.manifest.kernel.kernelVersion === "6.0-x");
    assert.deepEqual(await checkCachedImage(dir, "r2"), { ok: false, reason: "made with another init or module list", exists: true });
    writeFileSync(join(dir, INITRD_FILE), "initrX");
    assert.deepEqual(await checkCachedImage(dir, RECIPE), { ok: false, reason: "initramfs.cpio does not match its SHA256 in manifest.json", exists: true });
    rmSync(join(dir, KERNEL_FILE));
    assert.deepEqual(await checkCachedImage(dir, RECIPE), { ok: false, reason: "Image: ENOENT", exists: true });
    writeFileSync(join(dir, MANIFEST_FILE), "{");
    assert.match((await checkCachedImage(dir, RECIPE) as { reason: string }).reason, /unreadable manifest\.json/);
    writeFileSync(join(dir, MANIFEST_FILE), "[]");
    assert.match((await checkCachedImage(dir, RECIPE) as { reason: string }).reason, /not a tsvisor image manifest/);
    rmSync(join(dir, MANIFEST_FILE));
    assert.deepEqual(await checkCachedImage(dir, RECIPE), { ok: false, reason: "no manifest.json", exists: true });
  });
});

test("publishing: into place, over a broken image, but never over an intact one unless asked", async () => {
  await withCache(async (cache) => {
    const dest = join(cache, "images", "img");
    const build = async (kernel: string) => {
      const work = await makeBuildDir(cache);
      writeImage(join(work, "image"), kernel, "initrd");
      return work;
    };
    let work = await build("k1");
    assert.equal(await publishImage(join(work, "image"), dest, join(work, "old"), RECIPE, false), "published");
    assert.equal(readFileSync(join(dest, KERNEL_FILE), "utf8"), "k1");
    rmSync(work, { recursive: true });

    work = await build("k2"); // another pull finished first: its image stays
    const kept = await publishImage(join(work, "image"), dest, join(work, "old"), RECIPE, false);
    assert.ok(kept !== "published" && kept.files.Image.size === 2);
    assert.equal(readFileSync(join(dest, KERNEL_FILE), "utf8"), "k1");
    assert.equal(await publishImage(join(work, "image"), dest, join(work, "old"), RECIPE, true), "published"); // --force
    assert.equal(readFileSync(join(dest, KERNEL_FILE), "utf8"), "k2");
    assert.equal(readFileSync(join(work, "old", KERNEL_FILE), "utf8"), "k1");
    rmSync(work, { recursive: true });

    writeFileSync(join(dest, INITRD_FILE), "broken");
    work = await build("k3");
    assert.equal(await publishImage(join(work, "image"), dest, join(work, "old"), RECIPE, false), "published");
    assert.equal(readFileSync(join(dest, KERNEL_FILE), "utf8"), "k3");
  });
});

test("build directories of processes that are gone are removed, live ones kept", async () => {
  await withCache(async (cache) => {
    const mine = await makeBuildDir(cache);
    mkdirSync(join(cache, "tmp-999999999-abc"));
    mkdirSync(join(cache, "images"));
    await removeAbandonedBuilds(cache);
    assert.deepEqual(readdirSync(cache).sort(), ["images", mine.split("/").pop()].sort());
  });
});

test("makeDirectories: creates missing levels, refuses where mkdir cannot work", async () => {
  await withCache(async (cache) => {
    await makeDirectories(join(cache, "a", "b", "c"));
    assert.ok(existsSync(join(cache, "a", "b", "c")));
    await makeDirectories(join(cache, "a", "b", "c")); // exists: fine
  });
  await assert.rejects(makeDirectories("/proc/tsvisor-test/x"), /ENOENT/); // Node's recursive mkdir spins here
});
