// Gives the pages of free frames back to the kernel (madvise MADV_DONTNEED),
// so memory the frame pool reclaims leaves the process, as Firecracker does
// for a balloon's pages. WebAssembly memory never shrinks, and V8 offers no
// way to uncommit part of it; this does it underneath, on the memory's
// backing store. The pages read as zero when next touched (an anonymous
// private mapping), which is what a free frame must be: the caller checks
// that once (frame-zeroer.ts) and falls back to writing zeros if not.
//
// Built by scripts/build.mjs with the system's C++ compiler against Node's
// headers (no node-gyp: it would download headers), loaded with require().
#include <node.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

// release(sharedArrayBuffer, offset, length) -> 0, or errno on failure.
void Release(const v8::FunctionCallbackInfo<v8::Value>& args) {
  v8::Isolate* isolate = args.GetIsolate();
  v8::Local<v8::Context> ctx = isolate->GetCurrentContext();
  if (args.Length() != 3 || !args[0]->IsSharedArrayBuffer() || !args[1]->IsNumber() || !args[2]->IsNumber()) {
    isolate->ThrowException(v8::Exception::TypeError(v8::String::NewFromUtf8Literal(isolate, "release(SharedArrayBuffer, offset, length)")));
    return;
  }
  auto store = args[0].As<v8::SharedArrayBuffer>()->GetBackingStore();
  double offset = args[1]->NumberValue(ctx).FromMaybe(-1);
  double length = args[2]->NumberValue(ctx).FromMaybe(-1);
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  // Only whole pages inside the buffer: anything else is a caller bug, refused.
  if (offset < 0 || length <= 0 || offset + length > static_cast<double>(store->ByteLength()) ||
      static_cast<long long>(offset) % static_cast<long long>(page) != 0 ||
      static_cast<long long>(length) % static_cast<long long>(page) != 0) {
    isolate->ThrowException(v8::Exception::RangeError(v8::String::NewFromUtf8Literal(isolate, "release: range is not whole pages inside the buffer")));
    return;
  }
  char* at = static_cast<char*>(store->Data()) + static_cast<size_t>(offset);
  int rc = madvise(at, static_cast<size_t>(length), MADV_DONTNEED);
  args.GetReturnValue().Set(rc == 0 ? 0 : errno);
}

void Init(v8::Local<v8::Object> exports) {
  NODE_SET_METHOD(exports, "release", Release);
}

}  // namespace

// Context-aware: worker threads load it too.
NODE_MODULE_INIT() {
  (void)module;
  (void)context;
  Init(exports);
}
