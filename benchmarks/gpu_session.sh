#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md ("The GPU path, measured"), in one script, for a
# machine with an NVIDIA GPU, cupy and no network. Run from the repository root:
#
#     benchmarks/gpu_session.sh OUT_DIR
#
# Python packages the machine lacks travel as wheels in .whl/ (and the psfmodels sdist, which has
# no wheel for Python >= 3.12, in .sdist/, built here); they are installed into /tmp/site. Every
# step writes its log and JSON into OUT_DIR as it finishes, so a step that runs out of time costs
# only itself. The pipeline runs are pinned to two cores (taskset), like the 2-core machine of the
# CPU numbers: merfishflow with the GPU, merfishflow on the CPU only, and starfish, on the same data.
#
# The wheels were made on a machine with network access, for the GPU machine's Python 3.12 (its own
# numpy, scipy, scikit-image, tensorstore, cupy and the rest stay; pandas 2.3.2 because pyproject.toml
# asks for pandas < 3):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl NAME==VERSION
# for each package of snakemake's, anndata's, jsonschema's and requirements-starfish.txt's closure that
# the machine lacks (versions from requirements/constraints.txt), `pip wheel` for the pure-Python
# sdists, and `pip download --no-binary=:all: psfmodels==0.3.3 setuptools_scm<9` into .sdist/.
set -u
out=${1:?usage: benchmarks/gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s) $(date -u +%T)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc $(date -u +%T)"
    tail -n 25 "$out/$name.log"
    return $rc
}

nvidia-smi -L
nproc
$py -c "import sys, numpy, scipy, skimage, pandas, cupy; print(sys.version); print('numpy', numpy.__version__, 'scipy', scipy.__version__, 'skimage', skimage.__version__, 'pandas', pandas.__version__, 'cupy', cupy.__version__)"

step install 120 bash -c "
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .sdist/*.whl &&
  $py -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .sdist/psfmodels-*.tar.gz"
psf_ok=1
$py -c "import psfmodels" || psf_ok=0
$py -c "import merfishflow, snakemake, anndata, starfish, cupy; print('imports ok')" || echo "IMPORTS FAILED"

simulation='{}'
[ "$psf_ok" = 1 ] || simulation='{"psf_kind": "gaussian"}'   # no PSF model without psfmodels
# The experiment is simulated once, on cores 4-15, while the GPU tests run on cores 0-3.
step simulate 300 taskset -c 4-15 $py benchmarks/bench_pipeline.py --case 1024 --keep /tmp/bench \
    --simulation "$simulation" --simulate-only --cores 12 &
simulating=$!
step tests_deconvolution 150 taskset -c 0-3 $py -m pytest -q -rs -p no:cacheprovider tests/test_deconvolution.py
wait $simulating

step bench_deconvolution 150 taskset -c 0,1 $py benchmarks/bench_deconvolution.py --no-iteration --no-memory \
    --volume 9 1024 1024 --xp numpy cupy --volume-tiles 512 1024 --workers 2 --json "$out/bench_deconvolution.json"
step pipeline_gpu 240 taskset -c 0,1 $py benchmarks/bench_pipeline.py --case 1024 --keep /tmp/bench \
    --simulation "$simulation" --decon '{"device": "gpu"}' --json "$out/pipeline_gpu.json"
step pipeline_cpu 200 taskset -c 0,1 $py benchmarks/bench_pipeline.py --case 1024 --keep /tmp/bench \
    --simulation "$simulation" --no-starfish --json "$out/pipeline_cpu.json"
echo "done $(date -u +%T)"
