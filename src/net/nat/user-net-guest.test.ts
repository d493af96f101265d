// The user-mode network against Linux's own stack: the stock Debian guest of
// `tsvisor run` (whose default network it is) gets its address by DHCP,
// fetches from a web server on the host's loopback by address and by name,
// uploads, opens many connections at once, is refused on a closed port, and
// serves a connection the host makes through a port forward (`-p`).
// Traffic goes to 127.0.0.1 only.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import { connect, createServer as createTcpServer, type AddressInfo } from "node:net";
import { tsvisor, pullImage, bin, ok, reported } from "../../cli/test-tsvisor.js";

before(pullImage);

/** 4 MiB that differ from any other 4 MiB: the guest must get every byte in order. */
const BIG = Buffer.alloc(4 << 20);
for (let i = 0; i < BIG.length; i += 4) BIG.writeUInt32LE((i * 2654435761) >>> 0, i);
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");



async function webServer(): Promise<{ server: Server; port: number; uploads: string[] }> {
  const uploads: string[] = [];
  const server = createServer((req, res) => {
    if (req.url?.startsWith("/page")) res.end("hello from the host\n");
    else if (req.url === "/big") res.end(BIG);
    else if (req.url === "/upload" && req.method === "POST") {
      const hash = createHash("sha256");
      let bytes = 0;
      req.on("data", (d: Buffer) => (hash.update(d), (bytes += d.length)));
      req.on("end", () => {
        const digest = hash.digest("hex");
        uploads.push(digest);
        res.end(`${bytes} ${digest}\n`);
      });
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as AddressInfo).port, uploads };
}

/** A port nobody listens on (bound, closed). */
async function closedPort(): Promise<number> {
  const s = createTcpServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

test("tsvisor run's default network: DHCP, wget from the host by address and name, upload, 20 connections at once, refusal", { timeout: 600_000 }, async () => {
  const { server, port, uploads } = await webServer();
  const refused = await closedPort();
  try {
    const script = [
      `echo "addr=$(ip -4 -o addr show eth0 | awk '{print $4}')"`,
      `echo "route=$(ip route | awk '/^default/ {print $3}')"`,
      `echo "dns=$(awk '/^nameserver/ {print $2}' /etc/resolv.conf)"`,
      `echo "page=$(wget -q -O - http://10.0.2.2:${port}/page)"`,
      `echo "byname=$(wget -q -O - http://localhost:${port}/page)"`,
      `echo "big=$(wget -q -O - http://10.0.2.2:${port}/big | sha256sum | cut -d' ' -f1)"`,
      // busybox wget reads --post-file as a string (up to the first NUL): text, then.
      `seq 1 400000 > /tmp/up`,
      `echo "upsum=$(sha256sum /tmp/up | cut -d' ' -f1)"`,
      `echo "upload=$(wget -q -O - --post-file=/tmp/up http://10.0.2.2:${port}/upload)"`,
      `for i in $(seq 1 20); do wget -q -O /tmp/p$i "http://10.0.2.2:${port}/page?$i" & done; wait`,
      `echo "parallel=$(cat /tmp/p* | grep -c hello)"`,
      `echo "ping=$(ping -c 1 -W 5 10.0.2.2 >/dev/null && echo ok)"`,
      `wget -q -T 10 -O - http://10.0.2.2:${refused}/ 2>/tmp/err; echo "refused=$(cat /tmp/err)"`,
    ].join("\n");
    const out = reported(ok(await tsvisor(["run", "--mem", "256M", "--", "sh", "-c", script])));
    assert.equal(out.addr, "10.0.2.15/24");
    assert.equal(out.route, "10.0.2.2");
    assert.equal(out.dns, "10.0.2.3");
    assert.equal(out.page, "hello from the host");
    assert.equal(out.byname, "hello from the host", "localhost is resolved by the host and reached through the gateway");
    assert.equal(out.big, sha256(BIG));
    assert.match(out.upload, new RegExp(`^2688895 ${out.upsum}$`));
    assert.deepEqual(uploads, [out.upsum]);
    assert.equal(out.parallel, "20");
    assert.equal(out.ping, "ok");
    assert.match(out.refused, /refused/i);
  } finally {
    server.close();
  }
});

test("-p HOSTPORT:GUESTPORT: a connection to the host's port reaches a server in the guest", { timeout: 600_000 }, async () => {
  const hostPort = await closedPort();
  const child = spawn(process.execPath, [bin, "run", "--mem", "256M", "-p", `${hostPort}:8080`, "--", "sh", "-c",
    `echo listening; nc -l -p 8080 -e sh -c 'read line; echo "guest got: $line"'; echo served`], { stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d));
  child.stderr.on("data", (d: Buffer) => (stderr += d));
  child.stdin.end(); // a piped stdin is read to its end before the guest boots
  const exited = new Promise<number | null>((r) => child.on("close", r));
  try {
    const deadline = Date.now() + 300_000;
    while (!stdout.includes("listening\n")) {
      assert.ok(Date.now() < deadline && child.exitCode === null, `the guest never listened: ${stdout}${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // nc may not be listening yet when the guest prints: a refused try (the guest answers RST) is retried.
    let answer = "";
    while (!answer.includes("guest got")) {
      assert.ok(Date.now() < deadline, `no answer through the forward: ${stdout}${stderr}`);
      answer = await new Promise<string>((resolve) => {
        let got = "";
        const s = connect(hostPort, "127.0.0.1", () => s.write("hello through the forward\n"));
        s.on("data", (d) => (got += d));
        s.on("error", () => resolve(""));
        s.on("close", () => resolve(got));
      });
      if (!answer) await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(answer.trim(), "guest got: hello through the forward");
    assert.equal(await exited, 0, stderr);
    assert.match(stdout, /served/);
  } finally {
    child.kill("SIGKILL");
  }
});

test("network options: --net none, -p without a NAT and bad specs give one line", async () => {
  const none = await tsvisor(["run", "--net", "none", "--net", "user", "--", "true"]);
  assert.equal(none.status, 2);
  assert.match(none.stderr, /--net none/);
  const p = await tsvisor(["run", "--net", "socket=udp:127.0.0.1:5000,peer=127.0.0.1:5001", "-p", "8080:80", "--", "true"]);
  assert.equal(p.status, 2);
  assert.match(p.stderr, /-p forwards a host port through the user-mode network/);
  for (const [spec, pattern] of [
    ["user,hostfwd=tcp:80", /hostfwd=tcp:80: expected/],
    ["user,hostfwd=udp:5000:53", /only tcp/],
    ["user,net=10.0.2.0/33", /net=10.0.2.0\/33/],
    ["switch=a b", /switch name/],
    ["switch=lan,vlan=4095", /VLAN ID is 1..4094/],
    ["switch=lan,vxlan=16777216,remote=127.0.0.1", /VNI is 0..16777215/],
    ["switch=lan,vxlan=5", /needs remote=/],
    ["tap=tap0,hostfwd=tcp:1:2", /'hostfwd' is only for/],
  ] as const) {
    const r = await tsvisor(["run", "--net", spec, "--", "true"]);
    assert.equal(r.status, 2, spec);
    assert.match(r.stderr, pattern, spec);
    assert.equal(r.stderr.trim().split("\n").length, 1, spec);
  }
});
