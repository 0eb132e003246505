# Sourced (from the repo root) by chunk.sh and beauty_seed42.sh on the `device` GPU machine: installs the carried
# wheels (.whl: recbole & co., ../shared/tools/device-wheels.sh) into /tmp/site and puts the carried caches (.carry:
# bundle.sh) in place without overwriting what an earlier call left on a still-warm machine. Where python3 already
# has recbole (a checkout with .whl/ here: the wheels are for the device's Python 3.12), the wheels are left alone.
if [ -d .whl ] && ! python3 -c "import recbole" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
if [ -d .carry ]; then cp -rn .carry/dataset .carry/saved .; fi
