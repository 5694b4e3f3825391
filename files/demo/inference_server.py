# -*- coding: utf-8 -*-
# Copyright: GPU Resilience maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Demo GPU inference server: an OpenAI-compatible HTTP endpoint whose every request does real work
through the CUDA driver API, so that a GPU fault (or the CUDA fault shim, files/shim) makes real
requests fail the way they fail in a real inference engine.

Run as::

    python3 inference_server.py

Configuration, from the environment:

==================== =============================================================================
DEMO_LISTEN_HOST     address to listen on (default: $POD_IP, else 0.0.0.0)
DEMO_PORT            port (default 8000; 0: any free port, named in the start line)
DEMO_MODEL           the one model served (default demo-llm)
DEMO_LIBCUDA         the CUDA driver library (default libcuda.so.1, the node's driver)
DEMO_CUDA_DEVICE     CUDA device ordinal (default 0)
DEMO_EXIT_ON_FATAL   1 (default): exit with status 3 right after answering the request that hit a
                     CUDA error, as an engine whose CUDA context is lost does; 0: stay up, unhealthy
DEMO_VERIFY_COPY     1 (default): check that the bytes copied to the GPU come back unchanged; 0 for
                     a stand-in driver that does not move bytes (files/shim/tests/fake_cuda.c)
==================== =============================================================================

Endpoints: ``GET /health`` (200 ``{"status": "ok"}``, 503 after a CUDA error), ``GET /v1/models``,
``POST /v1/completions`` (OpenAI completions: ``model``, ``prompt`` as a string or a list of strings,
``max_tokens``; the completion text is a deterministic function of the prompt). Every request to
``/v1/completions`` makes the current thread's CUDA context current, allocates device memory, copies
the prompt's bytes to the GPU and back, synchronises and frees the memory. A CUDA error answers 500
with an OpenAI-style error (code ``cuda_error``) and makes the server unhealthy for good.

At start the server loads the driver, calls ``cuInit``, ``cuDeviceGet`` and retains the device's
primary context (what the CUDA runtime of a framework does); a CUDA error there exits with status 3
before the port is opened, because a real server cannot start on a broken GPU. A bad configuration
exits with status 2. Each event is one JSON line on stdout.

Python 3.8+ standard library only: the role demo_workload runs it from a ConfigMap on a stock
Python image.
"""

import ctypes
import datetime
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_CONFIG = 2
EXIT_CUDA = 3
MAX_BODY = 1 << 20              # bytes of a request body
MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 16         # the OpenAI API's default for completions
MAX_PROMPTS = 64

# CUresult names for the codes a GPU fault produces (the XID catalog's cuda_error values) and a few
# common others; any other code is written CUDA_ERROR_<n>.
CUDA_ERROR_NAMES = {
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    46: "CUDA_ERROR_DEVICES_UNAVAILABLE",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    214: "CUDA_ERROR_ECC_UNCORRECTABLE",
    500: "CUDA_ERROR_NOT_FOUND",
    700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    709: "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    719: "CUDA_ERROR_LAUNCH_FAILED",
    999: "CUDA_ERROR_UNKNOWN",
}

# Words of the deterministic completions.
VOCABULARY = (
    "the", "GPU", "node", "answers", "every", "request", "with", "a", "steady", "stream", "of", "tokens",
    "while", "its", "memory", "holds", "model", "weights", "and", "cache", "kernels", "run", "on", "time",
    "fault", "drill", "recovers", "cluster", "serves", "inference", "quickly", "again",
)
STOP_WORD = "."


def error_name(code):
    """The CUresult name of an error code."""
    return CUDA_ERROR_NAMES.get(code, "CUDA_ERROR_%d" % code)


class CudaError(Exception):
    """A CUDA driver call that did not return CUDA_SUCCESS."""

    def __init__(self, code, function, detail=""):
        self.code = code
        self.function = function
        super().__init__("CUDA error %d (%s) in %s%s" % (code, error_name(code), function, detail))


class ConfigError(Exception):
    """The server's environment is unusable."""


def log(event, **fields):
    """One JSON line on stdout per event."""
    record = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"), "event": event}
    record.update(fields)
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


# --- configuration -----------------------------------------------------------------------------

def _int_env(env, name, default, low, high):
    text = env.get(name, "").strip() or str(default)
    try:
        value = int(text)
    except ValueError:
        raise ConfigError("%s=%r is not a whole number" % (name, text)) from None
    if not low <= value <= high:
        raise ConfigError("%s=%d is outside %d..%d" % (name, value, low, high))
    return value


def _flag_env(env, name, default):
    text = env.get(name, "").strip() or default
    if text not in ("0", "1"):
        raise ConfigError("%s=%r must be 0 or 1" % (name, text))
    return text == "1"


def load_config(env):
    """The server's settings from an environment mapping (ConfigError when one is unusable)."""
    model = env.get("DEMO_MODEL", "").strip() or "demo-llm"
    if len(model) > 256 or any(ch.isspace() for ch in model):
        raise ConfigError("DEMO_MODEL=%r must be a model name without white space" % model)
    return {
        "host": env.get("DEMO_LISTEN_HOST", "").strip() or env.get("POD_IP", "").strip() or "0.0.0.0",
        "port": _int_env(env, "DEMO_PORT", 8000, 0, 65535),
        "model": model,
        "libcuda": env.get("DEMO_LIBCUDA", "").strip() or "libcuda.so.1",
        "device": _int_env(env, "DEMO_CUDA_DEVICE", 0, 0, 1023),
        "exit_on_fatal": _flag_env(env, "DEMO_EXIT_ON_FATAL", "1"),
        "verify_copy": _flag_env(env, "DEMO_VERIFY_COPY", "1"),
    }


# --- the GPU -----------------------------------------------------------------------------------

class Gpu:
    """One CUDA device and its primary context, used through the driver API with ctypes."""

    # name -> argument types of the driver functions used (all return a CUresult).
    SIGNATURES = {
        "cuInit": (ctypes.c_uint,),
        "cuDeviceGet": (ctypes.POINTER(ctypes.c_int), ctypes.c_int),
        "cuDeviceGetName": (ctypes.c_char_p, ctypes.c_int, ctypes.c_int),
        "cuDeviceGetPCIBusId": (ctypes.c_char_p, ctypes.c_int, ctypes.c_int),
        "cuDevicePrimaryCtxRetain": (ctypes.POINTER(ctypes.c_void_p), ctypes.c_int),
        "cuDevicePrimaryCtxRelease_v2": (ctypes.c_int,),
        "cuCtxSetCurrent": (ctypes.c_void_p,),
        "cuCtxSynchronize": (),
        "cuMemAlloc_v2": (ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t),
        "cuMemFree_v2": (ctypes.c_uint64,),
        "cuMemcpyHtoD_v2": (ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t),
        "cuMemcpyDtoH_v2": (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t),
    }

    def __init__(self, libcuda, ordinal, verify_copy=True):
        self.path = libcuda
        self.ordinal = ordinal
        self.verify_copy = verify_copy
        self.api = {}
        self.device = ctypes.c_int(-1)
        self.context = ctypes.c_void_p()
        self.name = ""
        self.pci = ""

    def _call(self, name, *args):
        code = self.api[name](*args)
        if code != 0:
            raise CudaError(code, name)

    def start(self):
        """Load the driver, initialise it and retain the device's primary context."""
        try:
            lib = ctypes.CDLL(self.path)
        except OSError as exc:
            # What the CUDA runtime reports when there is no driver: no usable device.
            raise CudaError(100, "dlopen", "(%s): %s" % (self.path, exc)) from None
        for name, argtypes in self.SIGNATURES.items():
            try:
                # Looked up with dlsym, as the CUDA runtime does: a preloaded shim sees this route too.
                function = getattr(lib, name)
            except AttributeError:
                raise CudaError(500, "dlsym", "(%s, %s): the driver has no such function" % (self.path, name)) from None
            function.restype = ctypes.c_int
            function.argtypes = list(argtypes)
            self.api[name] = function
        self._call("cuInit", 0)
        self._call("cuDeviceGet", ctypes.byref(self.device), self.ordinal)
        buf = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", buf, len(buf), self.device.value)
        self.name = buf.value.decode("utf-8", "replace")
        self._call("cuDeviceGetPCIBusId", buf, len(buf), self.device.value)
        self.pci = buf.value.decode("ascii", "replace").lower()
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(self.context), self.device.value)

    def round_trip(self, data):
        """Copy data to the device and back in this thread, with the device's context current."""
        size = max(len(data), 1)
        host_in = ctypes.create_string_buffer(data, size)
        # Filled with the complement, so a copy that did not happen cannot pass the check.
        host_out = ctypes.create_string_buffer(bytes(b ^ 0xFF for b in host_in.raw), size)
        dptr = ctypes.c_uint64(0)
        self._call("cuCtxSetCurrent", self.context)
        self._call("cuMemAlloc_v2", ctypes.byref(dptr), size)
        try:
            self._call("cuMemcpyHtoD_v2", dptr, host_in, size)
            self._call("cuMemcpyDtoH_v2", host_out, dptr, size)
            self._call("cuCtxSynchronize")
        except CudaError:
            # Best effort: the first error is what the caller needs to see.
            self.api["cuMemFree_v2"](dptr)
            raise
        self._call("cuMemFree_v2", dptr)
        if self.verify_copy and host_out.raw != host_in.raw:
            # Silent data corruption is what an uncorrectable ECC error causes.
            raise CudaError(214, "cuMemcpyDtoH_v2", " (the bytes came back changed)")

    def stop(self):
        """Release the primary context (errors do not matter any more at exit)."""
        if self.context:
            self.api["cuDevicePrimaryCtxRelease_v2"](self.device.value)


# --- requests ----------------------------------------------------------------------------------

class BadRequest(Exception):
    """A request the server refuses with an OpenAI-style error."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_completion_request(body, model):
    """(prompts, max_tokens) of a completions request body, BadRequest when it is unusable."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, "The request body is not valid JSON: %s" % exc) from None
    if not isinstance(request, dict):
        raise BadRequest(400, "The request body must be a JSON object.")
    if "model" not in request:
        raise BadRequest(400, "You must provide a model parameter.", param="model")
    if request["model"] != model:
        raise BadRequest(400, "The model %s does not exist; this server serves %s." % (
            json.dumps(request["model"]), model), param="model", code="model_not_found")
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise BadRequest(400, "prompt must be a string or a non-empty list of strings.", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(400, "At most %d prompts per request." % MAX_PROMPTS, param="prompt")
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(400, "max_tokens must be a whole number from 1 to %d, not %s." % (
            MAX_TOKENS_LIMIT, json.dumps(max_tokens)), param="max_tokens")
    if request.get("stream"):
        raise BadRequest(400, "Streaming is not supported by this server.", param="stream")
    return prompts, max_tokens


def complete(prompt, max_tokens):
    """(text, completion_tokens, finish_reason): a deterministic completion of a prompt."""
    words = []
    seed = hashlib.sha256(prompt.encode("utf-8")).digest()
    block = 0
    while len(words) < max_tokens:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
        for byte in digest:
            # One token in 33 ends the sentence (when at least a few words were said).
            if byte % 33 == 32 and len(words) >= 4:
                return " " + " ".join(words) + STOP_WORD, len(words) + 1, "stop"
            words.append(VOCABULARY[byte % len(VOCABULARY)])
            if len(words) == max_tokens:
                break
    return " " + " ".join(words), len(words), "length"


def completion_response(prompts, max_tokens, model, request_id):
    """The OpenAI completions response for prompts."""
    choices = []
    produced = 0
    for index, prompt in enumerate(prompts):
        text, tokens, reason = complete(prompt, max_tokens)
        produced += tokens
        choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": reason})
    prompt_tokens = sum(max(len(p.split()), 1) for p in prompts)
    return {
        "id": "cmpl-" + request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": produced,
                  "total_tokens": prompt_tokens + produced},
    }


def cuda_error_body(error):
    return {"error": {"message": str(error), "type": "server_error", "code": "cuda_error"}}


# --- HTTP --------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    """The HTTP server, with the GPU and the health state that every request shares."""

    daemon_threads = True
    # Clients of an inference server open many connections at once; the default backlog is 5.
    request_queue_size = 128

    def __init__(self, address, config, gpu):
        self.config = config
        self.gpu = gpu
        self.started = int(time.time())
        self.fatal = None           # the first CUDA error; the server is unhealthy from then on
        self.lock = threading.Lock()
        self.counter = 0
        super().__init__(address, Handler)

    def next_id(self):
        with self.lock:
            self.counter += 1
            return "%x-%d" % (self.started, self.counter)

    def record_fatal(self, error):
        """Keep the first CUDA error; True when this one was the first."""
        with self.lock:
            if self.fatal is not None:
                return False
            self.fatal = error
        log("fatal", error=str(error), code=error.code, name=error_name(error.code), function=error.function)
        return True


class Handler(BaseHTTPRequestHandler):
    server_version = "gpu-demo-inference/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        """Requests are logged as JSON by the handlers, not on stderr."""

    def _send(self, status, body, close=False):
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _log(self, status, started, **fields):
        log("request", method=self.command, path=self.path, status=status, client=self.client_address[0],
            ms=round((time.monotonic() - started) * 1000.0, 3), **fields)

    def do_GET(self):  # noqa: N802 (the name BaseHTTPRequestHandler calls)
        started = time.monotonic()
        server = self.server
        if self.path == "/health":
            if server.fatal is None:
                # Successful probes are not logged: the kubelet asks every few seconds.
                self._send(200, {"status": "ok"})
                return
            self._send(503, {"status": "unhealthy", "error": str(server.fatal)})
            self._log(503, started)
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": server.config["model"], "object": "model",
                                                         "created": server.started,
                                                         "owned_by": "gpu-resilience-demo"}]})
            self._log(200, started)
        else:
            self._not_found(started)

    def do_POST(self):  # noqa: N802
        started = time.monotonic()
        if self.path != "/v1/completions":
            self._not_found(started)
            return
        try:
            body = self._read_body()
        except BadRequest as exc:
            # The body was not read: the connection cannot carry another request.
            self._refuse(exc, started, close=True)
            return
        try:
            prompts, max_tokens = parse_completion_request(body, self.server.config["model"])
        except BadRequest as exc:
            self._refuse(exc, started)
            return
        self._serve_completion(prompts, max_tokens, started)

    def _refuse(self, exc, started, close=False):
        self._send(exc.status, exc.body, close=close)
        self._log(exc.status, started, error=exc.body["error"]["message"])

    def _serve_completion(self, prompts, max_tokens, started):
        server = self.server
        if server.fatal is not None:
            # The CUDA context is lost: no request can succeed until the server restarts.
            self._send(500, cuda_error_body(server.fatal))
            self._log(500, started, error=str(server.fatal))
            return
        try:
            server.gpu.round_trip("\n".join(prompts).encode("utf-8"))
        except CudaError as exc:
            first = server.record_fatal(exc)
            leaving = first and server.config["exit_on_fatal"]
            self._send(500, cuda_error_body(exc), close=leaving)
            self._log(500, started, error=str(exc), code=exc.code)
            if leaving:
                self._exit_after_answer()
            return
        response = completion_response(prompts, max_tokens, server.config["model"], server.next_id())
        self._send(200, response)
        self._log(200, started, prompts=len(prompts), completion_tokens=response["usage"]["completion_tokens"])

    def _exit_after_answer(self):
        """Leave like an engine whose CUDA context is lost, once this answer is on its way."""
        try:
            # FIN after the answer, so the client reads all of it before the process is gone.
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        log("exit", status=EXIT_CUDA, reason="CUDA error; the context is lost")
        os._exit(EXIT_CUDA)  # pylint: disable=protected-access

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            raise BadRequest(411, "A Content-Length header is required.")
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(400, "Content-Length %r is not a number." % length) from None
        if size < 0:
            raise BadRequest(400, "Content-Length %r is not a number." % length)
        if size > MAX_BODY:
            raise BadRequest(413, "The request body is larger than %d bytes." % MAX_BODY)
        return self.rfile.read(size)

    def _not_found(self, started):
        self._send(404, {"error": {"message": "No route %s %s." % (self.command, self.path),
                                   "type": "invalid_request_error", "param": None, "code": "not_found"}})
        self._log(404, started)


# --- main --------------------------------------------------------------------------------------

def main(env=None):
    env = os.environ if env is None else env
    try:
        config = load_config(env)
    except ConfigError as exc:
        log("fatal", phase="config", error=str(exc))
        return EXIT_CONFIG
    gpu = Gpu(config["libcuda"], config["device"], config["verify_copy"])
    try:
        gpu.start()
    except CudaError as exc:
        log("fatal", phase="start", error=str(exc), code=exc.code, name=error_name(exc.code), function=exc.function,
            libcuda=config["libcuda"], device=config["device"])
        return EXIT_CUDA
    try:
        server = Server((config["host"], config["port"]), config, gpu)
    except OSError as exc:
        log("fatal", phase="listen", error="cannot listen on %s:%d: %s" % (config["host"], config["port"], exc))
        return EXIT_CONFIG

    def stop(signum, _frame):
        log("stopping", signal=signum)
        # shutdown() waits for serve_forever() to return: it must run in another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log("start", host=host, port=port, model=config["model"], libcuda=config["libcuda"], device=config["device"],
        gpu_name=gpu.name, pci=gpu.pci, exit_on_fatal=config["exit_on_fatal"], verify_copy=config["verify_copy"],
        pid=os.getpid())
    try:
        server.serve_forever()
    finally:
        server.server_close()
        gpu.stop()
    log("stop", healthy=server.fatal is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
