"""The CUDA render kernels, run under Numba's CUDA simulator (no GPU), agree with the CPU
backend to 1e-5 relative (SPEC 6). The simulator must be switched on before Numba is
imported, so it runs in a subprocess; tiny stamps keep it fast (it runs Python per thread)."""
import json
import os
import subprocess
import sys

import numpy as np

from gpu_inject.draws import random_tasks
from gpu_inject.engine import DEFAULT_ACCURACY, get_backend
from gpu_inject.tasks import pack_params, read_columns

SIZE = 10
CHILD = """
import json, sys
import numpy as np
from gpu_inject.engine import DEFAULT_ACCURACY
from gpu_inject.kernels import cuda as K
a = json.loads(sys.stdin.read())
out = K.render(np.array(a["params"]), np.array(a["origin"]), a["size"], DEFAULT_ACCURACY)
print(json.dumps(out.tolist()))
"""


def test_cuda_kernels_under_the_simulator_match_the_cpu():
    tasks = random_tasks(3, seed=4)
    tasks["src_n"][0] = 4.0  # a cusp: the deepest refinement
    tasks["src_reff_arcsec"][0] = 0.1
    params, _ = pack_params(read_columns(tasks), 0.262)
    origin = np.full((3, 2), SIZE / 2) + [[0.3, -0.2], [0.0, 0.0], [-0.4, 0.1]]
    cpu = get_backend("cpu").render(params, origin, SIZE, DEFAULT_ACCURACY)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=600,
                         input=json.dumps({"params": params.tolist(),
                                           "origin": origin.tolist(), "size": SIZE}))
    assert res.returncode == 0, res.stderr[-2000:]
    sim = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    scale = np.abs(cpu).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(sim, cpu, rtol=1e-5, atol=1e-5 * scale.min())
    assert np.abs(sim - cpu).max() <= 1e-5 * scale.max()
