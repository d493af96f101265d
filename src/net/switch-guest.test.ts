// VMs of one host daemon on one virtual switch, seen from inside the stock
// guests: two on VLAN 10, which has a NAT uplink (DHCP gives them 10.0.2.15
// and .16 and they fetch from the host), talk to each other over TCP; a third
// on VLAN 20 reaches neither of them. Then the first card changes its MAC
// address: the switch drops what it sends (anti-spoofing) and `vm info` and
// the metrics count it.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { pullImage, reported } from "../cli/test-tsvisor.js";
import { TestHost } from "../api/test-host.js";

before(pullImage);


test("VMs on a switch: DHCP from its NAT, TCP between VLAN 10's VMs, nothing across to VLAN 20, a spoofed MAC dropped and counted", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-switch-"));
  const web = createServer((_, res) => res.end("hello from the host\n"));
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  const port = (web.address() as AddressInfo).port;
  const host = await TestHost.start(dir, ["--pcpus", "2", "--mem", "1G"]);
  try {
    const lan = (vlan: number, mac: string, nat: boolean) => `switch=lan,vlan=${vlan},mac=${mac}${nat ? ",nat" : ""}`;
    const b = [
      `echo "b-addr=$(ip -4 -o addr show eth0 | awk '{print $4}')"`,
      `nc -l -p 7000 -e sh -c 'read line; echo "b got $line"'`,
    ].join("\n");
    const a = [
      `echo "a-addr=$(ip -4 -o addr show eth0 | awk '{print $4}')"`,
      `echo "a-host=$(wget -q -O - http://10.0.2.2:${port}/)"`,
      `for i in $(seq 200); do r=$(echo hi-from-a | nc 10.0.2.15 7000) && [ -n "$r" ] && break; sleep 0.3; done`,
      `echo "a-tcp=$r"`,
      // Another MAC on the same card: the port lets nothing from it through.
      `ip link set eth0 down; ip link set eth0 address 02:00:00:00:00:99; ip link set eth0 up`,
      `ping -c 2 -W 1 10.0.2.2 >/dev/null 2>&1 && echo a-spoofed=through || echo a-spoofed=dropped`,
    ].join("\n");
    const c = [
      "ip link set eth0 up; ip addr add 10.0.2.17/24 dev eth0",
      `ping -c 2 -W 1 10.0.2.15 >/dev/null 2>&1 && echo c-to-a=through || echo c-to-a=blocked`,
      `ping -c 2 -W 1 10.0.2.2 >/dev/null 2>&1 && echo c-to-nat=through || echo c-to-nat=blocked`,
    ].join("\n");
    for (const [name, spec, script] of [
      ["b", lan(10, "52:54:00:00:10:02", true), b],
      ["a", lan(10, "52:54:00:00:10:01", true), a],
      ["c", lan(20, "52:54:00:00:20:01", false), c],
    ]) {
      const r = await host.vm("create", name, "--mem", "160M", "--net", spec, "--", "sh", "-c", script);
      assert.equal(r.status, 0, r.stderr);
    }
    // DHCP hands out addresses in the order cards ask: b first, so b is 10.0.2.15 and a 10.0.2.16.
    assert.equal((await host.vm("start", "b")).status, 0);
    const until = Date.now() + 300_000;
    while (!/b-addr=/.test((await host.vm("logs", "b")).stdout)) {
      assert.ok(Date.now() < until, "b never reported its address");
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal((await host.vm("start", "a")).status, 0);
    assert.equal((await host.vm("start", "c")).status, 0);
    for (const n of ["a", "b", "c"]) assert.equal((await host.vm("wait", n)).status, 0, `${n}: ${(await host.vm("logs", n)).stdout}`);
    const got = { ...reported((await host.vm("logs", "a")).stdout), ...reported((await host.vm("logs", "b")).stdout), ...reported((await host.vm("logs", "c")).stdout) };
    assert.equal(got["b-addr"], "10.0.2.15/24");
    assert.equal(got["a-addr"], "10.0.2.16/24");
    assert.equal(got["a-host"], "hello from the host");
    assert.equal(got["a-tcp"], "b got hi-from-a");
    assert.equal(got["c-to-a"], "blocked");
    assert.equal(got["c-to-nat"], "blocked");
    assert.equal(got["a-spoofed"], "dropped");
    const info = JSON.parse((await host.vm("info", "a", "--json")).stdout);
    const card = info.stats.nets[0];
    assert.equal(card.backend, "switch:lan:a/net0");
    assert.equal(card.port.allowedIp, "10.0.2.16", "the NAT's lease pins the port to its address");
    assert.ok(card.port.drops["spoofed-mac"] >= 1, JSON.stringify(card.port.drops));
    assert.match((await host.vm("info", "a")).stdout, /dropped .*spoofed-mac \d+/);
  } finally {
    await host.stop();
    web.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
