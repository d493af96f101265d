import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDisk } from "../backends/disk/disk.js";
import { parseControl } from "./apt.js";
import { SYSTEM_EXTRA_PACKAGES, basePackageNames, dpkgList, statusFile, systemRecipe, type UnpackedPackage } from "./debian-system.js";
import { rawToQcow2 } from "./qcow2-convert.js";

// As apt-cache dumpavail prints records (trixie, shortened).
const AVAIL = `Package: dpkg
Version: 1.22.21
Priority: required
Essential: yes
Architecture: riscv64

Package: apt
Version: 3.0.3
Priority: required
Architecture: riscv64

Package: iproute2
Version: 6.15.0-1
Priority: important
Architecture: riscv64
Description: networking and traffic control tools
 The iproute suite.

Package: python3
Version: 3.13.5-1
Priority: optional
Architecture: riscv64

Package: odd-essential
Version: 1
Priority: optional
Essential: yes
Architecture: all

Package: standard-thing
Version: 1
Priority: standard
Architecture: riscv64
`;

test("the base package set: priority required and important, and Essential, as debootstrap's default variant", () => {
  assert.deepEqual(basePackageNames(AVAIL), ["apt", "dpkg", "iproute2", "odd-essential"]);
  assert.deepEqual(basePackageNames(""), []);
  for (const p of ["apt", "systemd", "systemd-sysv", "bash", "coreutils", "iproute2", "iputils-ping", "ca-certificates", "ifupdown"]) {
    assert.ok(SYSTEM_EXTRA_PACKAGES.includes(p), p);
  }
});

test("dpkg .list files from tar's member names", () => {
  assert.deepEqual(dpkgList("./\n./usr/\n./usr/bin/\n./usr/bin/true\n./etc/default/keep me\n"), ["/.", "/usr", "/usr/bin", "/usr/bin/true", "/etc/default/keep me"]);
  assert.deepEqual(dpkgList(""), []);
});

test("the status file marks each package unpacked, with its conffiles new, and parses back", () => {
  const pkg = (control: string, conffiles: string[]): UnpackedPackage => {
    const c = parseControl(control);
    return { name: c.Package, version: c.Version, architecture: c.Architecture, infoName: c.Package, control: c, conffiles, hasPreinst: false };
  };
  const text = statusFile([
    pkg("Package: base-files\nVersion: 13.8\nArchitecture: riscv64\nEssential: yes\nDescription: Debian base system miscellaneous files\n This package contains the basic filesystem hierarchy.\n .\n Second paragraph.\n", ["/etc/debian_version", "/etc/host.conf"]),
    pkg("Package: libc6\nVersion: 2.41-12\nArchitecture: riscv64\nMulti-Arch: same\nDepends: libgcc-s1\nDescription: GNU C Library: Shared libraries\n", []),
  ]);
  const paras = text.trimEnd().split("\n\n");
  assert.equal(paras.length, 2);
  const first = parseControl(paras[0]);
  assert.equal(first.Package, "base-files");
  assert.equal(first.Status, "install ok unpacked");
  assert.equal(first.Essential, "yes");
  assert.equal(first.Conffiles.trim(), "/etc/debian_version newconffile\n/etc/host.conf newconffile");
  assert.match(paras[0], /\n \.\n Second paragraph\.$/);
  assert.ok(paras[0].split("\n")[1] === "Status: install ok unpacked", "Status right after Package");
  const second = parseControl(paras[1]);
  assert.equal(second.Status, "install ok unpacked");
  assert.equal(second.Conffiles, undefined);
  assert.equal(second.Depends, "libgcc-s1");
  assert.ok(text.endsWith("\n") && !text.endsWith("\n\n"));
});

test("the recipe is stable within a build", () => {
  assert.equal(systemRecipe(), systemRecipe());
  assert.match(systemRecipe(), /^[0-9a-f]{16}$/);
});

test("a raw image copied into qcow2 reads back the same, zero clusters left out", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-conv-"));
  try {
    const raw = join(dir, "a.raw");
    const data = new Uint8Array(4 * 2 ** 20 + 1000); // not a multiple of the cluster or sector size
    for (let i = 0; i < 5000; i++) data[i] = i & 0xff;
    data.fill(7, 3 * 2 ** 20, 3 * 2 ** 20 + 10);
    data[data.length - 1] = 9;
    writeFileSync(raw, data);
    const copied = rawToQcow2(raw, join(dir, "a.qcow2"));
    assert.equal(copied, 2 * 65536 + 1024, "two clusters and the last, partial one (in whole sectors) hold data");
    const disk = openDisk(join(dir, "a.qcow2"), { readOnly: true });
    try {
      assert.equal(disk.format, "qcow2");
      assert.equal(disk.virtualSize, Math.ceil(data.length / 512) * 512);
      const back = new Uint8Array(disk.virtualSize);
      disk.read(0, back);
      assert.deepEqual(back.subarray(0, data.length), data);
      assert.ok(back.subarray(data.length).every((b) => b === 0));
    } finally {
      disk.close();
    }
    assert.throws(() => rawToQcow2(raw, join(dir, "a.qcow2")), /exist/i);
    assert.ok(readFileSync(join(dir, "a.qcow2")).length < 1 << 20);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
