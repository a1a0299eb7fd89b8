"""What the benchmark scripts share: AlexNet's convolution shapes, the same seeded inputs and weights in
every process, one worker process per framework, rounds interleaved across them, and the reports.

How a comparison stays honest here:

* Each framework runs in its own child process (:class:`Worker`), started with a clean copy of the
  environment the benchmark was started with (:data:`START_ENVIRONMENT`, taken when this module is
  imported, before anything else). The parent never imports pyskim, torch or onnxruntime, so no
  variable one of them might set at import reaches another framework (pyskim sets none; its child
  reports what changed). Thread counts are set the way each framework documents:
  ``pyskim.set_num_threads`` (and ``OMP_NUM_THREADS``, the default of pyskim's pool) for pyskim,
  ``torch.set_num_threads`` for PyTorch, ``SessionOptions.intra_op_num_threads`` for onnxruntime.
* The children are timed in rounds (:func:`interleaved_rounds`): round r times every framework once,
  then round r + 1 starts, so that all of them see the same background load; a ratio is taken per
  round and the median of the per-round ratios is reported beside them (:func:`ratio_text`).
* Every child reports the BLAS / OpenMP libraries threadpoolctl finds in it (internal_api,
  architecture, num_threads) and the thread variables of its environment; the parent prints the load
  average before and after.

This module imports only the standard library at module level (numpy and the frameworks are imported
inside the functions that need them, in the child that needs them).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: The environment the benchmark was started with, before any framework could change it.
START_ENVIRONMENT = dict(os.environ)
#: Variables that choose threads, kernels or spinning of OpenMP / OpenBLAS / MKL (reported per process).
THREAD_VARIABLE_PREFIXES = ("OMP_", "OPENBLAS_", "MKL_", "KMP_", "GOMP_")

# AlexNet (bvlc_alexnet/deploy.prototxt): name, input C, H(=W), num_output, kernel, stride, pad, group
ALEXNET_CONVS = [
    ("conv1", 3, 227, 96, 11, 4, 0, 1),
    ("conv2", 96, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 256, 3, 1, 1, 2),
]
#: Group-1 versions of AlexNet's grouped layers (all input channels feed every output channel), for
#: engines that do not accelerate grouped convolution (DeepSparse): the fair per-layer comparison.
ALEXNET_GROUP1_CONVS = [
    ("conv2g1", 96, 27, 256, 5, 1, 2, 1),
    ("conv4g1", 384, 13, 384, 3, 1, 1, 1),
    ("conv5g1", 384, 13, 256, 3, 1, 1, 1),
]
_ALL_CONVS = ALEXNET_CONVS + ALEXNET_GROUP1_CONVS


# -- the same data in every process -----------------------------------------------------------------

def alexnet_conv(name):
    """The ``ALEXNET_CONVS`` or ``ALEXNET_GROUP1_CONVS`` entry called ``name``."""
    return next(conv for conv in _ALL_CONVS if conv[0] == name)


def conv_arrays(name, batch, density=1.0, seed=0):
    """Seeded float32 (input, weights, bias) for AlexNet layer ``name`` at ``batch``: input N(0, 1),
    weights N(0, 0.01^2) kept with probability ``density`` (a uniform random element-wise mask),
    bias N(0, 0.01^2). Every process computes the same arrays from the same arguments."""
    import numpy as np
    _, channels, size, num_output, kernel, _, _, group = alexnet_conv(name)
    layer_index = _ALL_CONVS.index(alexnet_conv(name))
    rng = np.random.default_rng([seed, layer_index, batch])
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    w = 0.01 * rng.standard_normal((num_output, channels // group, kernel, kernel), dtype=np.float32)
    bias = 0.01 * rng.standard_normal(num_output, dtype=np.float32)
    if density < 1.0:
        mask = np.random.default_rng([seed, layer_index, batch, round(density * 1e6)]).random(w.shape) < density
        w = w * mask
    return x, w, bias


def conv_flops(name, batch):
    """Dense FLOPs (2 x multiply-adds) of AlexNet layer ``name`` at ``batch``."""
    _, channels, size, num_output, kernel, stride, pad, group = alexnet_conv(name)
    out = (size + 2 * pad - kernel) // stride + 1
    return 2.0 * batch * num_output * out * out * (channels // group) * kernel * kernel


def conv_prototxt(name, batch, conv_mode="LOWERED_GEMM", backward=False):
    """A deploy prototxt: an Input "data" into AlexNet's Convolution ``name`` (top "conv") in
    SkimCaffe's ``conv_mode``; ``backward``: with ``force_backward`` (the bottom gradient too)."""
    _, channels, size, num_output, kernel, stride, pad, group = alexnet_conv(name)
    return ("force_backward: true\n" if backward else "") + f"""name: "{name}"
layer {{ name: "data" type: "Input" top: "data"
         input_param {{ shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
         convolution_param {{ num_output: {num_output} kernel_size: {kernel} stride: {stride} pad: {pad}
                              group: {group} conv_mode: {conv_mode} }} }}
"""


def pyskim_conv_net(name, batch, x, w, bias, conv_mode="LOWERED_GEMM", backward=False):
    """A pycaffe-style TEST Net of :func:`conv_prototxt` (written to a file and loaded the way a user
    does), with ``w`` / ``bias`` as the layer's weights and ``x`` in its input blob."""
    import pyskim
    with tempfile.TemporaryDirectory(prefix="bench_net_") as folder:
        path = os.path.join(folder, f"{name}.prototxt")
        with open(path, "w") as f:
            f.write(conv_prototxt(name, batch, conv_mode, backward))
        net = pyskim.Net(path, pyskim.TEST)
    net.params["conv"][0].data[...] = w
    net.params["conv"][1].data[...] = bias
    net.blobs["data"].data[...] = x
    return net


def torch_conv_call(name, x, w, bias):
    """``torch.nn.functional.conv2d`` of AlexNet layer ``name`` under ``inference_mode`` (oneDNN); the
    call allocates its output, as a user's does."""
    import torch
    _, _, _, _, _, stride, pad, group = alexnet_conv(name)
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)

    def conv():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(tx, tw, tb, stride, pad, 1, group)
    return conv


def top_diff_array(name, batch, seed=1):
    """Seeded float32 top diff N(0, 1) of AlexNet layer ``name`` at ``batch`` (same in every process)."""
    import numpy as np
    _, _, size, num_output, kernel, stride, pad, _ = alexnet_conv(name)
    out = (size + 2 * pad - kernel) // stride + 1
    rng = np.random.default_rng([seed, _ALL_CONVS.index(alexnet_conv(name)), batch])
    return rng.standard_normal((batch, num_output, out, out), dtype=np.float32)


def torch_conv_backward_call(name, x, w, bias, top_diff):
    """The backward pass of ``torch.nn.functional.conv2d`` (autograd: input, weight and bias
    gradients for ``top_diff``); the forward runs once, outside the timed call. Returns (call,
    to_array) where to_array flattens the input and weight gradients."""
    import torch
    _, _, _, _, _, stride, pad, group = alexnet_conv(name)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, bias))
    y = torch.nn.functional.conv2d(tx, tw, tb, stride, pad, 1, group)
    td = torch.from_numpy(top_diff)

    def backward():
        return torch.autograd.grad(y, (tx, tw, tb), td, retain_graph=True)
    return backward, lambda grads: np_concat(grads[0].numpy(), grads[1].numpy())


def np_concat(*arrays):
    """The arrays flattened into one."""
    import numpy as np
    return np.concatenate([a.ravel() for a in arrays])


def conv_onnx_model(name, w, bias):
    """An ONNX model (opset 17) of AlexNet's Conv ``name`` with weights ``w`` and ``bias``: input "x"
    (any batch), output "y"."""
    from onnx import TensorProto, helper, numpy_helper
    _, channels, size, _, kernel, stride, pad, group = alexnet_conv(name)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=group,
                            kernel_shape=[kernel, kernel])
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, size, size])
    graph = helper.make_graph([node], name, [x_info],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ort_session(model_bytes, threads):
    """An onnxruntime session (CPU provider, MLAS) of a serialized ONNX model, ``intra_op_num_threads =
    threads`` (0: onnxruntime's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_conv_call(name, x, w, bias, threads):
    """An onnxruntime session running AlexNet's Conv ``name`` (:func:`conv_onnx_model`) on ``x``
    (:func:`ort_session`); returns the call to time."""
    session = ort_session(conv_onnx_model(name, w, bias).SerializeToString(), threads)
    return lambda: session.run(None, {"x": x})[0]


# -- timing -----------------------------------------------------------------------------------------

def call_times(fn, repeats):
    """The wall time, in seconds, of each of ``repeats`` calls of ``fn()`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved_rounds(timers, rounds, quiet_wait=0.0, settle=0.0):
    """Run ``timers`` (label -> callable returning seconds) in ``rounds`` rounds: round r calls each
    timer once, in order, before round r + 1 starts; with ``quiet_wait`` > 0, each round first waits
    (at most that many seconds) for the machine to be idle (:func:`wait_until_quiet`). Each timer
    starts ``settle`` seconds after the previous one ended, so that the worker threads the previous
    framework leaves spinning (OpenMP and onnxruntime pools spin-wait after a call) have gone to
    sleep instead of taking the next framework's cores. Returns label -> list of seconds, one per
    round."""
    seconds = {label: [] for label in timers}
    for _ in range(rounds):
        if quiet_wait > 0:
            wait_until_quiet(quiet_wait)
        for label, timer in timers.items():
            time.sleep(settle)
            seconds[label].append(timer())
    return seconds


def busy_jiffies():
    """Jiffies the whole machine spent busy (not idle, not waiting for I/O) since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def wait_until_quiet(max_wait, threshold=0.05):
    """Wait until the machine uses less than ``threshold`` CPUs over half a second, or ``max_wait``
    seconds passed; called while every worker is idle, so what it sees is other processes' work."""
    hz = os.sysconf("SC_CLK_TCK")
    end = time.perf_counter() + max_wait
    while time.perf_counter() < end:
        start = busy_jiffies()
        time.sleep(0.5)
        if (busy_jiffies() - start) / hz / 0.5 < threshold:
            return


def median_ratio(numerators, denominators):
    """The median of the per-round ratios numerator / denominator."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def ratio_text(numerators, denominators):
    """Per-round ratios numerator / denominator and their median, as ``"median (r1 r2 ...)"``."""
    ratios = " ".join(f"{n / d:.2f}" for n, d in zip(numerators, denominators))
    return f"{median_ratio(numerators, denominators):.2f} ({ratios})"


def load_average_text():
    """The 1/5/15-minute load averages of the machine."""
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# -- worker processes -------------------------------------------------------------------------------

def worker_environment(extra=None, drop=()):
    """A clean copy of :data:`START_ENVIRONMENT` for a child, without the variables in ``drop``, with
    those of ``extra``."""
    env = {k: v for k, v in START_ENVIRONMENT.items() if k not in drop}
    env.update(extra or {})
    return env


def pyskim_environment(threads, drop=(), extra=None):
    """The pyskim child's environment: :func:`worker_environment` plus ``OMP_NUM_THREADS`` (the
    default of pyskim's pool) and ``OPENBLAS_NUM_THREADS`` (numpy's BLAS, which pyskim does not call)
    when ``threads`` > 0."""
    thread_vars = {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)} if threads else {}
    return worker_environment({**thread_vars, **(extra or {})}, drop)


class Worker:
    """The parent's handle on one framework's child process: ``python script --worker NAME --threads N``
    answering one JSON request per line (:func:`serve`); ``python`` is the interpreter (default this
    one; a peer installed in its own virtual environment, as DeepSparse, runs under that one's)."""

    def __init__(self, script, name, threads, env, python=None):
        self.name = name
        command = [python or sys.executable, os.path.abspath(script), "--worker", name, "--threads", str(threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    def call(self, op, **kwargs):
        """Ask the child to run ``op(**kwargs)``; its answer (an exception in the child is raised here)."""
        self.process.stdin.write(json.dumps({"op": op, "kwargs": kwargs}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited with status {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name} worker: {reply['error']}")
        return reply["result"]

    def close(self):
        """End the child (it exits when its input closes)."""
        self.process.stdin.close()
        self.process.wait()


def training_workers(script, threads, no_torch):
    """The children of a training benchmark: pyskim with its thread variable, PyTorch (unless
    ``no_torch``) in its default environment."""
    workers = {"pyskim": Worker(script, "pyskim", threads, pyskim_environment(threads))}
    if not no_torch:
        workers["torch"] = Worker(script, "torch", threads, worker_environment())
    return workers


def training_rounds(workers, rounds, iters, job):
    """``rounds`` interleaved rounds: round r has each worker ``train(**job(label))`` once (a dict
    with ``seconds`` and ``accuracy``), then round r + 1. Prints each run and every worker's report
    before and after (after training: every library the run loaded). Returns label -> runs."""
    runs = {label: [] for label in workers}
    for worker in workers.values():
        print("  " + worker.call("info"), flush=True)
    for r in range(rounds):
        for label, worker in workers.items():
            run = worker.call("train", **job(label))
            runs[label].append(run)
            print(f"round {r + 1} {label:6s}: {run['seconds']:7.1f} s  {iters / run['seconds']:6.2f} iterations/s  "
                  f"final test accuracy {run['accuracy']:.4f}", flush=True)
    for worker in workers.values():
        print("  " + worker.call("info"), flush=True)
    return runs


def serve_if_worker(servers):
    """In a child started by :class:`Worker` (``--worker NAME --threads N`` on the command line): serve
    ``servers[NAME](N)`` until the parent closes the pipe, then exit. Otherwise return at once."""
    if "--worker" not in sys.argv:
        return
    name = sys.argv[sys.argv.index("--worker") + 1]
    threads = int(sys.argv[sys.argv.index("--threads") + 1])
    serve(servers[name](threads))
    sys.exit(0)


def max_relative_error(path, reference_path):
    """max |a - ref| / max |ref| of two saved outputs (.npy)."""
    import numpy as np
    a, ref = np.load(path), np.load(reference_path)
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a - ref).max() / max(1e-30, float(np.abs(ref).max())))


def serve(server):
    """The child's loop: answer each JSON request line ``{"op", "kwargs"}`` from stdin with
    ``server.<op>(**kwargs)`` on the original stdout. Anything the frameworks print goes to stderr."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": getattr(server, request["op"])(**request["kwargs"])}
        except Exception as error:  # noqa: BLE001  (reported to the parent, which raises it)
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def process_report(framework, extra=""):
    """One line about this process: the framework, the thread variables of its environment and each
    thread pool threadpoolctl finds (internal_api, architecture, num_threads). ``KMP_DUPLICATE_LIB_OK``
    is left out: threadpoolctl itself sets it when imported, after the frameworks loaded."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(THREAD_VARIABLE_PREFIXES) and k != "KMP_DUPLICATE_LIB_OK"}
    try:
        from threadpoolctl import threadpool_info
        pools = "; ".join(f"{p.get('internal_api')} {p.get('version') or ''} "
                          f"({os.path.basename(p.get('filepath') or '?')}) arch={p.get('architecture')} "
                          f"threads={p.get('num_threads')}" for p in threadpool_info())
    except ImportError:
        pools = "threadpoolctl not installed"
    return f"{framework} (pid {os.getpid()}){extra}: env {env or '{}'}; pools: {pools or 'none'}"


class Server:
    """The child side of a framework: named methods (name -> (call, to_array)) set up by
    :meth:`build`, timed (:meth:`time`), saved for the parent's output check (:meth:`save`) and the
    process report (:meth:`info`). Subclasses import their framework in ``__init__`` and set
    ``framework``."""

    framework = "?"

    def __init__(self, threads):
        self.threads = threads
        self.methods = {}
        self.import_note = ""

    def build(self, **case):
        """Name -> (call, to_array) for ``case``."""
        raise NotImplementedError

    def setup(self, **case):
        """Build ``case``'s methods, call each once (allocation, packing); their names."""
        self.methods = self.build(**case)
        for call, _ in self.methods.values():
            call()
        return list(self.methods)

    def time(self, method, repeats):
        """Median seconds of ``repeats`` calls of ``method`` after one untimed call."""
        return statistics.median(call_times(self.methods[method][0], repeats))

    def save(self, method, path):
        """Write ``method``'s output to ``path`` (.npy)."""
        import numpy as np
        call, to_array = self.methods[method]
        np.save(path, to_array(call()))

    def info(self):
        """:func:`process_report` of this process."""
        return process_report(self.framework, self.import_note)


class PyskimServer(Server):
    """pyskim's child: numpy is imported first (as most user scripts do), then pyskim; the thread count
    goes to ``pyskim.kernels.set_num_threads`` (``OMP_NUM_THREADS`` was set at spawn too). The report
    names the variables pyskim itself set at import (none)."""

    framework = "pyskim"

    def __init__(self, threads):
        super().__init__(threads)
        import numpy  # noqa: F401  (numpy first, as in most user scripts)
        before = dict(os.environ)
        import pyskim
        import pyskim.kernels
        set_at_import = {k: v for k, v in os.environ.items() if before.get(k) != v}
        if threads:
            pyskim.kernels.set_num_threads(threads)
        self.import_note = (f" {pyskim.__version__}, kernel threads {pyskim.kernels.get_num_threads()}, "
                            f"imported after numpy; set at import: {set_at_import or 'nothing'}")


class TorchServer(Server):
    """PyTorch's child, in its default environment; ``torch.set_num_threads`` when threads > 0."""

    framework = "torch"

    def __init__(self, threads):
        super().__init__(threads)
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.import_note = f" {torch.__version__}, {torch.get_num_threads()} threads"


class OrtServer(Server):
    """onnxruntime's child, in its default environment; its sessions get ``intra_op_num_threads``."""

    framework = "ort"

    def __init__(self, threads):
        super().__init__(threads)
        import onnxruntime
        self.import_note = (f" {onnxruntime.__version__}, intra_op_num_threads "
                            f"{threads or 'default'}")

    def onnx_call(self, path, x):
        """A session of the ONNX model at ``path`` (:func:`ort_session`); returns the call running it on
        ``x`` (its first input) and returning its first output."""
        with open(path, "rb") as f:
            session = ort_session(f.read(), self.threads)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: x})[0]


class OpenVinoServer(Server):
    """OpenVINO's child (CPU plugin, f32 inference precision, its default latency hint), in its default
    environment, possibly under the interpreter of its own virtual environment; compiled models get
    ``INFERENCE_NUM_THREADS`` when threads > 0."""

    framework = "openvino"

    def __init__(self, threads):
        super().__init__(threads)
        import openvino
        self.core = openvino.Core()
        self.import_note = f" {openvino.__version__}, INFERENCE_NUM_THREADS {threads or 'default'}"

    def onnx_call(self, path, x):
        """The ONNX model at ``path`` compiled for the CPU at ``x``'s shape; returns the call running
        one inference request on ``x`` and returning its first output."""
        model = self.core.read_model(path)
        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        request = self.core.compile_model(model, "CPU", config).create_infer_request()

        def infer():
            request.infer({0: x})
            return request.get_output_tensor(0).data
        return infer


class DeepSparseServer(Server):
    """DeepSparse's child (``deepsparse.compile_model``), in its default environment under the
    interpreter of its own virtual environment (DeepSparse 1.8 needs numpy < 2); engines get
    ``num_cores = threads`` (0: all cores)."""

    framework = "deepsparse"

    def __init__(self, threads):
        super().__init__(threads)
        import deepsparse
        self.import_note = f" {deepsparse.__version__}, num_cores {threads or 'default'}"

    def onnx_call(self, path, x):
        """A DeepSparse engine of the ONNX model at ``path`` for ``x``'s batch; returns the call running
        it on ``x`` and returning its first output."""
        from deepsparse import compile_model
        engine = compile_model(path, batch_size=x.shape[0], num_cores=self.threads or None)
        return lambda: engine.run([x])[0]
