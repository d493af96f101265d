import { test } from "node:test";
import assert from "node:assert/strict";
import { describeNetSpec, formatMac, NetBackendError, openNetBackend, parseNetSpec } from "./net-backend.js";

test("--net accepts each backend, with and without a MAC", () => {
  assert.deepEqual(parseNetSpec("tap=tap0"), { backend: { kind: "tap", ifname: "tap0" } });
  const tap = parseNetSpec("tap=tap0,mac=52:54:00:12:34:56");
  assert.equal(formatMac(tap.mac!), "52:54:00:12:34:56");
  assert.deepEqual(parseNetSpec("mac=52:54:00:AB:cd:ef,socket=listen:/tmp/a.sock").backend, { kind: "unix", mode: "listen", path: "/tmp/a.sock" });
  assert.deepEqual(parseNetSpec("socket=connect:/tmp/x,,y").backend, { kind: "unix", mode: "connect", path: "/tmp/x,y" });
  assert.deepEqual(parseNetSpec("socket=udp:127.0.0.1:5001,peer=localhost:5002").backend, {
    kind: "udp",
    local: { host: "127.0.0.1", port: 5001 },
    peer: { host: "localhost", port: 5002 },
  });
  const v6 = parseNetSpec("socket=udp:[::1]:5001,peer=[::1]:5002");
  assert.equal(describeNetSpec(v6), "socket:udp:[::1]:5001->[::1]:5002");
  assert.equal(describeNetSpec(parseNetSpec("tap=tap0")), "tap:tap0");
  assert.equal(describeNetSpec(parseNetSpec("socket=listen:/tmp/a")), "socket:listen:/tmp/a");
});

test("--net refuses unclear input with one line naming what is wrong", () => {
  const refuses = (spec: string, pattern: RegExp) =>
    assert.throws(() => parseNetSpec(spec), (e: unknown) => e instanceof NetBackendError && pattern.test(e.message) && !e.message.includes("\n"), spec);
  refuses("", /needs a backend/);
  refuses("mac=52:54:00:12:34:56", /needs a backend/);
  refuses("tap=tap0,speed=10", /unknown option 'speed'/);
  refuses("tap", /'tap' needs a value/);
  refuses("tap=tap0,mac", /'mac' needs a value/);
  refuses("tap=tap0,mac=", /'mac' needs a value/);
  refuses("tap=tap0,tap=tap1", /'tap' is given twice/);
  refuses("tap=tap0,", /empty option/);
  refuses("tap=tap0,socket=listen:/x", /choose one backend/);
  refuses("tap=averyveryverylongname", /longer than 15/);
  refuses("tap=a/b", /not a valid interface name/);
  refuses("socket=listen:", /needs a path/);
  refuses(`socket=connect:/${"x".repeat(120)}`, /longer than 107/);
  refuses("socket=tcp:1.2.3.4:5", /expected listen:PATH/);
  refuses("socket=udp:127.0.0.1:5001", /needs peer=HOST:PORT/);
  refuses("socket=udp:127.0.0.1,peer=127.0.0.1:5002", /'socket=udp' expects HOST:PORT/);
  refuses("socket=udp:127.0.0.1:0,peer=127.0.0.1:5002", /port 0 is not in 1..65535/);
  refuses("socket=udp:127.0.0.1:5001,peer=::1:5002", /'peer' expects HOST:PORT/);
  refuses("socket=listen:/x,peer=127.0.0.1:5002", /'peer' is only for socket=udp/);
  refuses("tap=tap0,mac=52:54:00:12:34", /six hex bytes/);
  refuses("tap=tap0,mac=52-54-00-12-34-56", /six hex bytes/);
  refuses("tap=tap0,mac=01:00:5e:00:00:01", /multicast/);
  refuses("tap=tap0,mac=ff:ff:ff:ff:ff:ff", /multicast/);
  refuses("tap=tap0,mac=00:00:00:00:00:00", /not a valid address/);
});

test("opening refuses with one line: a path that is not a socket, an unresolvable host", async () => {
  await assert.rejects(openNetBackend(parseNetSpec("socket=listen:/etc/hostname")), /socket:listen:\/etc\/hostname: .* exists and is not a socket/);
  await assert.rejects(openNetBackend(parseNetSpec("socket=connect:/etc/hostname")), /cannot connect/);
  await assert.rejects(openNetBackend(parseNetSpec("socket=udp:no-such-host.invalid:5001,peer=127.0.0.1:5002")), /cannot resolve the local address/);
});
