// The Disk message as the target takes it from an untrusted source: every
// field checked before a byte is written (disk-copy.ts applyDisk).
import { test } from "node:test";
import assert from "node:assert/strict";
import { applyDisk, type DiskCopySink } from "./disk-copy.js";
import { DISK_HEADER_BYTES, MAX_DISK_RUN, MigrationError } from "./stream.js";

class MemorySink implements DiskCopySink {
  readonly bytes: Uint8Array;
  writes = 0;
  constructor(readonly name: string, readonly capacityBytes: number) {
    this.bytes = new Uint8Array(capacityBytes);
  }
  async writeDisk(offset: number, data: Uint8Array): Promise<void> {
    this.writes++;
    this.bytes.set(data, offset);
  }
  async writeDiskZeroes(offset: number, length: number): Promise<void> {
    this.writes++;
    this.bytes.fill(0, offset, offset + length);
  }
}

function message(disk: number, flags: number, offset: bigint | number, length: bigint | number, data = new Uint8Array(0)): Buffer {
  const h = Buffer.alloc(DISK_HEADER_BYTES);
  h.writeUInt32LE(disk, 0);
  h.writeUInt32LE(flags, 4);
  h.writeBigUInt64LE(BigInt(offset), 8);
  h.writeBigUInt64LE(BigInt(length), 16);
  return Buffer.concat([h, data]);
}

test("a Disk message writes its bytes, or zeroes, at its offset in the disk it names", async () => {
  const a = new MemorySink("blk0", 1 << 20);
  const b = new MemorySink("blk1", 64 << 10);
  await applyDisk(message(1, 0, 4096, 1024, new Uint8Array(1024).fill(7)), [a, b]);
  assert.equal(b.bytes[4096], 7);
  assert.equal(b.bytes[4096 + 1023], 7);
  assert.equal(b.bytes[4096 + 1024], 0);
  assert.equal(a.writes, 0);
  await applyDisk(message(1, 1, 4096, 512), [a, b]);
  assert.equal(b.bytes[4096], 0);
  assert.equal(b.bytes[4096 + 512], 7);
});

test("a malformed Disk message is refused with one line and writes nothing", async () => {
  const sink = new MemorySink("blk0", 1 << 20);
  const cases: [Buffer, RegExp][] = [
    [Buffer.alloc(10), /a Disk message of 10 bytes/],
    [message(1, 0, 0, 512, new Uint8Array(512)), /disk 1, 1 announced/],
    [message(0, 2, 0, 512, new Uint8Array(512)), /unknown flags/],
    [message(0, 0, 100, 512, new Uint8Array(512)), /not whole sectors/],
    [message(0, 0, 0, 500, new Uint8Array(500)), /not whole sectors/],
    [message(0, 0, (1 << 20) - 512, 1024, new Uint8Array(1024)), /outside its 1048576 bytes/],
    [message(0, 1, 2n ** 63n, 512), /outside/],
    [message(0, 1, 0, MAX_DISK_RUN + 512), /outside|not whole/],
    [message(0, 0, 0, 1024, new Uint8Array(512)), /512 data bytes for a length of 1024/],
    [message(0, 1, 0, 512, new Uint8Array(512)), /512 data bytes for a length of 512 of zeroes/],
  ];
  for (const [payload, want] of cases) {
    await assert.rejects(applyDisk(payload, [sink]), (e: Error) => e instanceof MigrationError && want.test(e.message) && !e.message.includes("\n"));
  }
  assert.equal(sink.writes, 0);
});

test("a copy that fails to write ends the migration with the disk's name and reason", async () => {
  const sink: DiskCopySink = {
    name: "blk0", capacityBytes: 4096,
    writeDisk: async () => { throw new Error("No space left on device"); },
    writeDiskZeroes: async () => {},
  };
  await assert.rejects(applyDisk(message(0, 0, 0, 512, new Uint8Array(512).fill(1)), [sink]), /writing the copy of blk0: No space left on device/);
});
