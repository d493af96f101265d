import { test } from "node:test";
import assert from "node:assert/strict";
import { DnsProxy } from "./dns.js";

/** A standard query for `name` (RFC 1035 4.1.1, 4.1.2), recursion desired. */
function query(name: string, type: number, id = 0x4242): Uint8Array {
  const labels = name.split(".").flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Uint8Array.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, type >> 8, type & 0xff, 0, 1]);
}

function ask(dns: DnsProxy, q: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no answer")), 10_000);
    dns.query(q, (a) => (clearTimeout(t), resolve(a)));
  });
}

test("DNS: names resolve through the host's resolver; the host's loopback appears as the gateway", async () => {
  const dns = new DnsProxy(0x0a000202);
  try {
    // localhost comes from /etc/hosts: no packet leaves the machine.
    const a = await ask(dns, query("localhost", 1));
    assert.equal((a[0] << 8) | a[1], 0x4242, "the answer carries the query's ID");
    assert.equal(a[2] & 0x80, 0x80, "QR: a response");
    assert.equal(a[3] & 0x0f, 0, "NOERROR");
    const answers = (a[6] << 8) | a[7];
    assert.ok(answers >= 1);
    assert.deepEqual([...a.subarray(a.length - 4)], [10, 0, 2, 2], "127.0.0.1 is rewritten to 10.0.2.2");
  } finally {
    dns.close();
  }
});

test("DNS: malformed queries get FORMERR or nothing, never a throw", async () => {
  const dns = new DnsProxy(0x0a000202);
  try {
    const replies: Uint8Array[] = [];
    dns.query(new Uint8Array(5), (r) => replies.push(r));
    const pointer = query("a", 1);
    pointer[12] = 0xc0; // a compression pointer in a question
    dns.query(pointer, (r) => replies.push(r));
    const two = query("b", 1);
    two[5] = 2; // two questions
    dns.query(two, (r) => replies.push(r));
    const response = query("c", 1);
    response[2] |= 0x80; // a response, not a query
    dns.query(response, (r) => replies.push(r));
    assert.equal(replies.length, 2);
    for (const r of replies) assert.equal(r[3] & 0x0f, 1, "FORMERR");
    assert.equal(dns.stats.malformed, 4);
  } finally {
    dns.close();
  }
});
