"""The engine without I/O: render the lensed source, convolve, inject, reduce metrics.

One interface, two backends: ``CpuBackend`` (Numba loops on this machine's cores) and
``GpuBackend`` (Numba CUDA kernels on CuPy arrays, cuFFT), each with ``xp`` (its array
module), ``chunk``, ``reduce`` (its metric kernels), ``to_device``/``to_host``, ``render``
and ``psf_arcs``. ``auto`` picks the GPU when one works and says why.
"""
import inspect
from collections import deque
from dataclasses import dataclass

import numba
import numpy as np

from . import tasks as T
from .kernels.psf import render_size


@dataclass(frozen=True)
class Accuracy:
    """Tolerances of the adaptive pixel integration (``physics.integrate``), in units of the
    source's unlensed flux F: eps_gate for a pixel accepted from its own 5 samples, eps_abs
    per pixel^2 and eps_rel of a node's value for the two-level test, eps_cusp for the most a
    cell at a cusp or the lens centre may hold unrefined.
    The defaults meet SPEC section 6 (0.1 % in flux, 1 % of the peak pixel) over the manifest
    ranges: see benchmarks/accuracy.py for the measurement. eps_gate was 3e-5 until a draw
    came within 7.9e-4 of the 1e-3 flux limit through one pixel the gate accepted; at 1e-5
    its error is 5.8e-5 (``benchmarks/accuracy.py --draws 600 --seed 2 --no-corners
    [--eps eps_gate=3e-5]``, draw #428)."""
    eps_gate: float = 1e-5
    eps_abs: float = 1e-2
    eps_rel: float = 1e-1
    eps_cusp: float = 3e-3
    max_level: int = 20


DEFAULT_ACCURACY = Accuracy()


@dataclass
class ArcBatch:
    """What ``render_arcs`` returns (SPEC section 7)."""
    images: np.ndarray          # float32 [N, nbands, S, S], arc only, after the PSF
    magnification: np.ndarray   # float64 [N]: lensed flux over the render grid / F
    total_flux: np.ndarray      # float64 [N, nbands]: sum of images over the stamp


#: Device memory a stamp of a render chunk takes: render, corner grids and FFT temporaries,
#: ~1 MB at 64x64 with its PSF margin (GpuBackend sizes its chunks and flights with it).
CHUNK_STAMP_BYTES = 1 << 20
#: Batches queued on the GPU at once (inject_batches): one computes while the other's
#: inputs go in and the previous one's results come out.
IN_FLIGHT = 2


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run here; the message says why in one line."""


def _keep_freed_heap():
    """glibc only: serve arrays up to 64 MB from the heap and keep up to 512 MB of it when
    freed. A chunk's arrays (render grids, arcs: 6-8 MB each) are otherwise given back to
    the kernel and faulted in again at every chunk. Measured when the PSF still ran as numpy
    passes over whole chunks: 12 % of the engine's time on a 2-core VM (bench, one thread,
    490-505 -> 563-566 stamps/s), for about 100 MB more resident memory."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, TypeError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return
    m_trim_threshold, m_mmap_threshold = -1, -3   # from glibc's malloc.h
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 512 << 20)


class CpuBackend:
    """Numba-compiled loops on this machine's cores, the PSF's FFTs included (psf_cpu)."""
    name = "cpu"
    xp = np
    # Stamps rendered and convolved together: bounds the chunk's arrays (float64 render
    # grids and float32 arcs, ~0.1 MB per stamp) whatever the batch size; the FFTs' own
    # temporaries are one stamp's per thread (psf_cpu).
    chunk = 128

    def __init__(self):
        from .kernels import cpu, psf_cpu, reduce, vecmath

        self._cpu, self._psf_cpu, self.reduce = cpu, psf_cpu, reduce
        _keep_freed_heap()
        self.device = f"CPU, {numba.get_num_threads()} Numba threads, {vecmath.MODE}"
        self.why = "asked for"

    def to_device(self, a):
        return np.asarray(a)

    def to_host(self, a):
        return a

    def synchronize(self):
        """Nothing runs asynchronously on the CPU."""

    def render(self, params, origin, size, acc):
        out = np.empty((params.shape[0], size, size))
        # stamps cost 0.3 to 10 ms each: hand them to threads one at a time, not in halves
        with numba.parallel_chunksize(1):
            self._cpu.render_batch(params, origin, size, acc.eps_gate, acc.eps_abs,
                                   acc.eps_rel, acc.eps_cusp, acc.max_level, out)
        return out

    def psf_arcs(self, render, fwhm_px, flux, stamp_size, margin, model, beta):
        """(images float32 [m, B, S, S], magnification [m], total float64 [m, B]): a
        chunk's renders through each band's PSF, scaled by its flux, and the renders' sums
        (``psf_cpu``, one stamp per thread)."""
        return self._psf_cpu.convolve_scale(render, fwhm_px, flux, stamp_size, margin,
                                            model=model, beta=beta)


def _one_line(exc):
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class GpuBackend:
    """Numba CUDA kernels (the same physics source as the CPU) on CuPy arrays, cuFFT for the
    PSF through the CPU's own FFT code with ``xp = cupy``; a batch stays on the device from
    the copy of its cutouts to the copy back of its results. Device memory comes from CuPy's
    pool, host buffers for the copies from its pinned pool; all the work of a batch goes on
    CuPy's current stream (``inject_batches`` gives each batch in flight its own), Numba
    kernels included. ``why`` says how batches are sized and queued (``plan``).

    Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, no GPU) the same code runs on
    numpy arrays: that is how CI tests it. ``auto`` never picks the simulator."""
    name = "gpu"

    def __init__(self):
        from numba import config, cuda

        self.simulator = bool(config.ENABLE_CUDASIM)
        if self.simulator:
            self.xp = np
            self.device = "Numba CUDA simulator (no GPU: kernels run in Python on numpy arrays)"
            self.chunk = 128
            self.flight_bytes = None   # no device memory to bound
            self.plan = f"chunks of {self.chunk} stamps, batches queued as on a GPU"
        else:
            try:
                available = cuda.is_available()
            except Exception as exc:  # noqa: BLE001 - driver or toolkit trouble
                raise BackendUnavailable(f"--backend gpu: Numba CUDA cannot start: "
                                         f"{_one_line(exc)}") from None
            if not available:
                raise BackendUnavailable("--backend gpu: no usable CUDA GPU here "
                                         "(numba.cuda.is_available() is False)")
            try:
                import cupy
            except ImportError:
                raise BackendUnavailable("--backend gpu: CuPy is not installed "
                                         "(pip install 'gpu_inject[gpu]')") from None
            try:
                dev = cupy.cuda.Device()
                props = cupy.cuda.runtime.getDeviceProperties(dev.id)
                free, total = dev.mem_info
                float(cupy.arange(4, dtype=cupy.float64).sum())  # a kernel really runs
            except Exception as exc:  # noqa: BLE001 - CuPy present but no working device
                raise BackendUnavailable(f"--backend gpu: CuPy cannot use the GPU: "
                                         f"{_one_line(exc)}") from None
            self.xp = cupy
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            # Chunks' temporaries use at most a quarter of the memory free at start, the
            # batches in flight (inputs, results, their chunks' temporaries) at most half.
            self.chunk = int(max(256, min(16384, free // 4 // CHUNK_STAMP_BYTES)))
            self.flight_bytes = free // 2
            self.device = (f"{name}, {total / 2**30:.0f} GiB, compute capability "
                           f"{props['major']}.{props['minor']}")
            # in ``why``, not ``device``: it varies with the memory free, and a Spark run
            # groups its tasks by device
            self.plan = (f"chunks of {self.chunk} stamps, up to {IN_FLIGHT} batches in flight "
                         f"within {self.flight_bytes / 2**30:.1f} GiB (half the "
                         f"{free / 2**30:.1f} GiB free at start)")
        from .kernels import cuda as kernels
        from .kernels import psf, reduce_cuda

        self._kernels, self._psf, self.reduce = kernels, psf, reduce_cuda
        self.why = f"asked for; {self.plan}"
        # One stream per batch in flight (see inject_batches); under the simulator, stand-ins
        # so that the same scheduling code runs there.
        self.streams = [self._new_stream() for _ in range(IN_FLIGHT)]
        self._keep = None   # the pinned staging buffers of the batch being enqueued
        self._fft_done = None   # an event after the last FFTs queued (convolve_crop)

    def to_device(self, a):
        """Host array -> device on the current stream, through a pinned staging buffer (from
        CuPy's pinned pool) so that the copy is asynchronous; the array itself under the
        simulator. Inside ``inject_batches`` the buffer is kept until its batch is done;
        outside, the copy is waited for before the buffer goes back to the pool."""
        if self.simulator:
            return np.ascontiguousarray(a)
        cupy = self.xp
        if isinstance(a, cupy.ndarray):
            return a
        a = np.ascontiguousarray(a)
        staging = self._pinned(a.shape, a.dtype)
        staging[...] = a
        out = cupy.empty(a.shape, a.dtype)
        stream = cupy.cuda.get_current_stream()
        out.set(staging, stream=stream)
        if self._keep is None:
            stream.synchronize()
        else:
            self._keep.append(staging)
        return out

    def to_host(self, a):
        if self.simulator or isinstance(a, np.ndarray):
            return np.asarray(a)
        return a.get()

    # The primitives of inject_batches' scheduling, stand-ins under the simulator.

    def _new_stream(self):
        return None if self.simulator else self.xp.cuda.Stream(non_blocking=True)

    def _pinned(self, shape, dtype):
        """An uninitialised numpy array in pinned host memory (CuPy's pinned pool: it goes
        back to the pool when the array is dropped); plain memory under the simulator."""
        if self.simulator:
            return np.empty(shape, dtype)
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        mem = self.xp.cuda.alloc_pinned_memory(max(size * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype, size).reshape(shape)

    def submit(self, stream, enqueue):
        """Run ``enqueue()`` (it queues one batch's work and returns its device results, a
        dict of arrays) with ``stream`` current, then queue the copy of every result into
        pinned host memory on the same stream. Returns the batch in flight: (host results,
        an event that completes with the copies, what must live until then)."""
        if self.simulator:
            out = enqueue()
            return {k: np.array(v) for k, v in out.items()}, None, None
        self._keep = keep = []
        try:
            with stream:
                out = enqueue()
                host = {}
                for k, v in out.items():
                    host[k] = self._pinned(v.shape, v.dtype)
                    v.get(stream=stream, out=host[k], blocking=False)
                event = stream.record()
        except BaseException:
            stream.synchronize()   # copies already queued read the staging buffers: let them
            raise                  # finish before the buffers go back to the pool
        finally:
            self._keep = None
        # the device results stay referenced until the copies are done: their memory must
        # not be reused by the next batch on this stream before then
        return host, event, (keep, out)

    def collect(self, flight):
        """The host results of a batch from ``submit``, once its copies are done."""
        host, event, _ = flight
        if event is not None:
            event.synchronize()
        return host

    def batch_bytes(self, cutout, invvar, maskbits):
        """Device memory a batch holds while in flight: its inputs, the injected images,
        and its render chunks' temporaries (the per-stamp metrics are negligible)."""
        n = cutout.shape[0]
        return (2 * cutout.nbytes + invvar.nbytes + maskbits.nbytes
                + min(n, self.chunk) * CHUNK_STAMP_BYTES)

    def synchronize(self):
        """Wait for all work queued on the device (before a clock is read)."""
        if not self.simulator:
            self.xp.cuda.Device().synchronize()

    def render(self, params, origin, size, acc):
        return self._kernels.render(params, origin, size, acc, xp=self.xp)

    def convolve_crop(self, render, fwhm_px, stamp_size, margin, model, beta):
        """The PSF with cuFFT, on the current stream, after the FFTs queued before it on any
        stream: CuPy caches one plan per shape, and a plan's work area is not safe for two
        streams at once (cupy/cupy#8079), so batches in flight take turns here (a wait on the
        device, not on the host); their copies and other kernels still overlap."""
        if self.simulator:
            return self._psf.convolve_crop(render, fwhm_px, stamp_size, margin, model=model,
                                           beta=beta, xp=self.xp)
        stream = self.xp.cuda.get_current_stream()
        if self._fft_done is not None:
            stream.wait_event(self._fft_done)
        out = self._psf.convolve_crop(render, fwhm_px, stamp_size, margin, model=model,
                                      beta=beta, xp=self.xp)
        self._fft_done = stream.record()
        return out

    def psf_arcs(self, render, fwhm_px, flux, stamp_size, margin, model, beta):
        """(images float32 [m, B, S, S], magnification [m], total float64 [m, B]) on the
        device: a chunk's renders through each band's PSF (cuFFT), scaled by its flux, and
        the renders' sums."""
        xp = self.xp
        # The PSF in float32: the stamps are float32 (SPEC 4), and a float32 FFT's
        # rounding, ~1e-7 of a stamp's peak, is below theirs. Sums stay float64.
        conv = self.convolve_crop(render.astype(xp.float32), fwhm_px, stamp_size, margin,
                                  model, beta)
        conv *= xp.asarray(flux)[:, :, None, None]
        return conv.astype(xp.float32), render.sum(axis=(1, 2)), conv.sum(axis=(2, 3))


def get_backend(name="auto"):
    """The backend called ``name`` (cpu, gpu, auto), or BackendUnavailable saying why not.
    ``auto``: the GPU when Numba CUDA and CuPy both work on a device, else the CPU; its
    ``why`` says which and why."""
    if name == "cpu":
        return CpuBackend()
    if name == "gpu":
        return GpuBackend()
    if name == "auto":
        from numba import config

        if config.ENABLE_CUDASIM:
            why = "the Numba CUDA simulator is not a GPU"
        else:
            try:
                b = GpuBackend()
                b.why = f"auto: GPU found ({b.device}); {b.plan}"
                return b
            except BackendUnavailable as exc:
                why = str(exc).replace("--backend gpu: ", "")
        b = CpuBackend()
        b.why = f"auto: using the CPU ({why})"
        return b
    raise ValueError(f"backend = {name!r}: choose auto, cpu or gpu")


def iter_arcs(backend, params, flux, fwhm_px, origin_offset, stamp_size, psf_model,
              moffat_beta, acc=DEFAULT_ACCURACY):
    """Arcs from packed parameters, one chunk (at most ``backend.chunk`` rows of one render
    size) at a time: yields (rows int64 [m], images float32 [m, B, S, S], magnification
    [m], total_flux float64 [m, B], summed before the cast to float32), arrays of the
    backend's array module (on the device for the GPU). Every temporary is a chunk's, never
    the whole input's: on the CPU, arrays over glibc's mmap threshold are fresh pages each
    time, and faulting them in cost more than the injection and metrics themselves.

    flux: float64 [n, B] unlensed flux per band; fwhm_px [n, B] PSF FWHM in pixels (0: none);
    origin_offset [n, 2]: lens centre minus (S//2, S//2), pixels. The render grid size
    depends only on each stamp's own PSF, and every stamp is computed from its own inputs
    only: results do not depend on what else is in the batch."""
    s = stamp_size
    for idx, margin, size in render_chunks(fwhm_px, s, backend.chunk):
        origin = origin_offset[idx] + (margin + s // 2)
        render = backend.render(np.ascontiguousarray(params[idx]), origin, size, acc)
        yield idx, *backend.psf_arcs(render, fwhm_px[idx], flux[idx], s, margin, psf_model,
                                     moffat_beta)


def render_chunks(fwhm_px, stamp_size, chunk):
    """The chunks iter_arcs renders: (rows int64 [<= chunk], margin, render size L), the rows
    of one render size (set by each row's widest PSF, fwhm_px [n, B] pixels) together."""
    sizes, margins = render_size(stamp_size, fwhm_px.max(axis=1, initial=0.0))
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes == size)
        for start in range(0, group.size, chunk):
            yield group[start:start + chunk], int(margins[group[0]]), int(size)


def inject_batch(backend, cols, psf_fwhm_arcsec, cutout, invvar, maskbits, *, pixscale, bands,
                 lens_offset, psf_model="gaussian", moffat_beta=3.5, acc=DEFAULT_ACCURACY,
                 to_host=True):
    """The engine's whole job on one batch of valid rows (injections and CONTROLs): render,
    convolve, inject and reduce the SPEC section 5 metrics. Returns a dict of arrays, host
    (numpy) arrays unless ``to_host`` is False (then the backend's: the benchmark times the
    copy back apart).

    cols: manifest columns (``tasks.read_columns``), rows already validated; psf_fwhm_arcsec
    [n, B]; cutout, invvar float32 [n, B, S, S]; maskbits int [n, S, S]; pixscale: arcsec per
    pixel, a scalar or one per row (each brick's WCS); lens_offset [n, 2].
    CONTROL rows are not rendered: their image is the cutout itself and their arc metrics
    (arc_snr, arc_snr_opt, magnification, total_injected_flux) are NaN."""
    n, nb, s, _ = cutout.shape
    xp, red = backend.xp, backend.reduce
    pixscale = np.broadcast_to(np.asarray(pixscale, dtype=np.float64), (n,))
    inj = np.flatnonzero(cols["lens_model"] != "CONTROL")
    cutout = backend.to_device(cutout)
    invvar = backend.to_device(invvar)
    image = cutout.astype(xp.float32, order="C")   # CONTROL rows: the cutout itself
    mag = xp.full(n, np.nan)
    total = xp.full((n, nb), np.nan)
    arc_snr = xp.full(n, np.nan)
    arc_snr_opt = xp.full(n, np.nan)
    if inj.size:
        sub = {k: v[inj] for k, v in cols.items()}
        params, flux_r = T.pack_params(sub, pixscale[inj])
        flux = T.band_fluxes(sub, flux_r, bands)
        fwhm_px = psf_fwhm_arcsec[inj] / pixscale[inj, None]
        r = list(bands).index("r")
        for c, arcs, chunk_mag, chunk_total in iter_arcs(
                backend, params, flux, fwhm_px, lens_offset[inj], s, psf_model, moffat_beta,
                acc):
            at = xp.asarray(inj[c])
            mag[at] = chunk_mag
            total[at] = chunk_total
            red.inject_rows(cutout, invvar, arcs, at, r, image, arc_snr, arc_snr_opt)
    bad, wise = red.mask_fractions(backend.to_device(maskbits), invvar)
    out = {
        "image": image,
        "magnification": mag,
        "total_injected_flux": total,
        "arc_snr": arc_snr,
        "arc_snr_opt": arc_snr_opt,
        "bad_pixel_frac": bad,
        "wise_brightmask_frac": wise,
    }
    return {k: backend.to_host(v) for k, v in out.items()} if to_host else out


def _name_batch(exc, k, n):
    """``exc`` with a note naming the batch it came from (add_note on Python >= 3.11)."""
    note = f"in batch {k} of inject_batches ({n} stamps; batches counted from 0)"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return exc


def inject_batches(backend, batches):
    """``inject_batch`` on each ``(args, kwargs)`` of ``batches``, yielding each batch's host
    results in order: the same arrays as ``inject_batch(backend, *args, **kwargs)``
    (``to_host`` must not be given). ``batches`` is any iterable, read lazily: when batch k's
    results are yielded, batches up to k + IN_FLIGHT have been taken from it (up to k on the
    CPU).

    On a GPU up to ``IN_FLIGHT`` batches are queued at once, each on its own stream: while one
    batch's kernels run, the next one's inputs are copied in (pinned staging buffers) and the
    previous one's results copied out (into pinned host memory, returned as numpy views), and
    the host prepares the next batch. A batch joins the queue only if its device memory and
    that of the batches in flight fit ``backend.flight_bytes``; otherwise the oldest is
    finished first. On the CPU the batches run one after the other; under Numba's simulator
    the queueing runs as on a GPU, but each batch is computed as it is queued.

    An exception raised by a batch (a bad input, a device error) comes out after the results
    of every batch before it, with a note naming the batch (counted from 0); so does one
    raised by ``batches`` itself, without the note. No later batch is started."""
    submit = getattr(backend, "submit", None)
    it = iter(batches)
    flights = deque()   # (k, stamps, device bytes, flight), oldest first
    failed = None
    k = 0
    try:
        while failed is None:
            try:
                args, kw = next(it)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - the caller's: raised in its turn below
                failed = exc
                break
            bound = inspect.signature(inject_batch).bind(backend, *args, **kw).arguments
            n = len(bound["cutout"])
            if submit is None:
                try:
                    res = inject_batch(backend, *args, **kw)
                except Exception as exc:
                    _name_batch(exc, k, n)
                    raise
                yield res
                k += 1
                continue
            need = backend.batch_bytes(bound["cutout"], bound["invvar"], bound["maskbits"])
            while flights and (len(flights) >= IN_FLIGHT or (
                    backend.flight_bytes is not None
                    and need + sum(f[2] for f in flights) > backend.flight_bytes)):
                yield _collect(backend, flights.popleft())
            try:
                flight = submit(backend.streams[k % IN_FLIGHT],
                                lambda: inject_batch(backend, *args, **kw, to_host=False))
            except Exception as exc:
                failed = _name_batch(exc, k, n)
                break
            flights.append((k, n, need, flight))
            k += 1
        while flights:
            yield _collect(backend, flights.popleft())
    finally:
        # Closed early (the consumer stopped, or raised): wait for the copies still queued
        # before their pinned buffers can go back to the pool. Errors here would hide the
        # one that brought us here, and the batches are given up anyway.
        for _, _, _, flight in flights:
            try:
                backend.collect(flight)
            except Exception:  # noqa: BLE001, S110
                pass
    if failed is not None:
        raise failed


def _collect(backend, entry):
    k, n, _, flight = entry
    try:
        return backend.collect(flight)
    except Exception as exc:
        _name_batch(exc, k, n)
        raise


def render_arcs(tasks, *, stamp_size, psf_fwhm, pixscale=0.262, bands="grz", lens_offset=None,
                backend="auto", psf_model="gaussian", moffat_beta=3.5):
    """Lensed arcs for N tasks (SPEC section 7): the engine without I/O.

    tasks: pyarrow Table or mapping of manifest columns (section 4) -> 1-D arrays.
    psf_fwhm: float [N, nbands] arcsec, 0 for no convolution. lens_offset: float [N, 2], the
    lens centre minus (S//2, S//2) in pixels (x, y). CONTROL rows give empty arcs and a NaN
    magnification. A bad row raises ValueError naming the row, the column and the range.
    """
    bands = list(bands.split(",") if "," in bands else bands)
    if stamp_size < 16 or stamp_size % 2:
        raise ValueError(f"stamp_size = {stamp_size}: must be an even integer >= 16")
    if not (np.isfinite(pixscale) and pixscale > 0):
        raise ValueError(f"pixscale = {pixscale}: must be > 0 (arcsec per pixel)")
    if psf_model not in ("gaussian", "moffat"):
        raise ValueError(f"psf_model = {psf_model!r}: choose gaussian or moffat")
    if psf_model == "moffat" and not (np.isfinite(moffat_beta) and moffat_beta > 1):
        raise ValueError(f"moffat_beta = {moffat_beta}: must be > 1")
    cols = T.read_columns(tasks)
    n = len(cols["lens_model"])
    fwhm = np.asarray(psf_fwhm, dtype=np.float64)
    if fwhm.shape != (n, len(bands)):
        raise ValueError(f"psf_fwhm has shape {fwhm.shape}, expected ({n}, {len(bands)})")
    bad_psf = np.flatnonzero(~np.isfinite(fwhm).all(axis=1) | (fwhm < 0).any(axis=1))
    if bad_psf.size:
        k = bad_psf[0]
        raise ValueError(f"row {k}: psf_fwhm = {fwhm[k].tolist()} must be finite and >= 0")
    offset = np.zeros((n, 2)) if lens_offset is None else np.asarray(lens_offset, np.float64)
    if offset.shape != (n, 2) or not np.isfinite(offset).all():
        raise ValueError(f"lens_offset must be finite with shape ({n}, 2), got {offset.shape}")
    errors = T.row_errors(cols)
    bad = [k for k, e in enumerate(errors) if e]
    if bad:
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise ValueError(f"row {bad[0]}: {errors[bad[0]]}{more}")
    be = get_backend(backend)
    params, flux_r = T.pack_params(cols, pixscale)
    flux = T.band_fluxes(cols, flux_r, bands)
    images = np.empty((n, len(bands), stamp_size, stamp_size), dtype=np.float32)
    mag = np.empty(n)
    total = np.empty((n, len(bands)))
    for rows, *arcs in iter_arcs(be, params, flux, fwhm / pixscale, offset, stamp_size,
                                 psf_model, moffat_beta):
        images[rows], mag[rows], total[rows] = (be.to_host(a) for a in arcs)
    mag[cols["lens_model"] == "CONTROL"] = np.nan
    return ArcBatch(images=images, magnification=mag, total_flux=total)
