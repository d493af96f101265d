import { test } from "node:test";
import assert from "node:assert/strict";
import { dependsNames, isTransientAptFailure, packageRecord, parseControl } from "./apt.js";
import { ImageError } from "./errors.js";

// As `apt-cache show --no-all-versions linux-image-riscv64` prints it (trixie, 2025).
const META = `Package: linux-image-riscv64
Source: linux
Version: 6.12.107-1
Architecture: riscv64
Provides: linux-image-generic, wireguard-modules (= 1.0.0)
Depends: linux-image-6.12.107+deb13-riscv64 (= 6.12.107-1)
Description: Linux for 64-bit RISC-V platforms (meta-package)
 This package depends on the latest Linux kernel
 .
 and modules for use on RISC-V.
Filename: pool/main/l/linux/linux-image-riscv64_6.12.107-1_riscv64.deb
Size: 1436
SHA256: 1b458cc5b1d13b946bdca67bdca891fccf57882f8af972276d1346b24fa8285b

Package: second-paragraph
`;

test("a package record from apt-cache show: name, version, size, SHA256, Depends names", () => {
  const r = packageRecord(META, "linux-image-riscv64");
  assert.deepEqual(r, {
    name: "linux-image-riscv64", version: "6.12.107-1", size: 1436,
    sha256: "1b458cc5b1d13b946bdca67bdca891fccf57882f8af972276d1346b24fa8285b",
    depends: ["linux-image-6.12.107+deb13-riscv64"],
  });
  assert.equal(parseControl(META).Description, "Linux for 64-bit RISC-V platforms (meta-package)\nThis package depends on the latest Linux kernel\n.\nand modules for use on RISC-V.");
  assert.deepEqual(dependsNames("kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, libc6:any,"), ["kmod", "initramfs-tools", "libc6"]);
});

test("a record without what we check is refused with one line", () => {
  const bad = (text: string, pattern: RegExp) =>
    assert.throws(() => packageRecord(text, "p"), (e: unknown) => e instanceof ImageError && pattern.test(e.message));
  bad("", /apt-cache show p: the record has no Package, Version, Size, SHA256/);
  bad(META.replace(/^SHA256: .*$/m, "SHA256: xyz"), /bad SHA256 xyz/);
  bad(META.replace(/^Size: .*$/m, "Size: -1"), /bad Size -1/);
});

test("a mirror in the middle of a sync is worth waiting for; an unreachable one is not", () => {
  // Messages as apt 2.6 prints them.
  const syncing = "E: Failed to fetch http://deb.debian.org/debian/dists/trixie/main/binary-riscv64/Packages.xz  File has unexpected size (9385284 != 9387120). Mirror sync in progress? [IP: 203.0.113.80 80]";
  assert.equal(isTransientAptFailure(syncing), true);
  assert.equal(isTransientAptFailure("E: Failed to fetch http://x/Packages.xz  Hash Sum mismatch"), true);
  assert.equal(isTransientAptFailure("E: Failed to fetch http://x/InRelease  503  Service Unavailable [IP: 1.2.3.4 80]"), true);
  assert.equal(isTransientAptFailure("E: Failed to fetch http://127.0.0.1:9/debian/dists/trixie/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)"), false);
  assert.equal(isTransientAptFailure("E: Unable to locate package linux-image-riscv64"), false);
  assert.equal(isTransientAptFailure("E: Failed to fetch http://x/InRelease  404  Not Found"), false);
});
