# catdog batch labeler: `docker run ... IMAGE predict-folder /data --out /data/labels.csv`
#
#   docker build -t catdog .                                  # model mounted at run time (--model /model)
#   docker build -t catdog --build-arg MODEL_DIR=models .     # model baked in from ./models
#   docker build -t catdog:full --build-arg EXTRAS=pipeline . # + TensorFlow, DVC, git: runs the pipeline
#
# The labeling image needs only inference: the bundle's model.tflite run by LiteRT (ai-edge-litert),
# Pillow and NumPy; no TensorFlow. Layers are ordered so that a code change rebuilds in seconds:
# dependencies (from pyproject.toml's list only) -> model -> code.
# Works with the legacy builder (no BuildKit features). Every stage below is built, so they are all small;
# the full image is a build argument, not a separate target, because the legacy builder would build
# a TensorFlow stage placed before the default (last) one on every build.

ARG PYTHON_IMAGE=python:3.11-slim

# 1. The dependency list, generated from pyproject.toml: core dependencies plus the chosen extras
#    (`catdog[x]` self-references expanded), with requirements.lock (when present) as pip constraints,
#    so the image gets the same pinned versions as the host. Only these two files feed the next stage,
#    so editing other parts of pyproject.toml (version, pytest settings) keeps the dependency layer cached.
FROM ${PYTHON_IMAGE} AS requirements
ARG EXTRAS=litert
WORKDIR /src
COPY pyproject.toml requirements.lock* ./
RUN python -c 'import sys, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p.get("optional-dependencies", {}); \
own = lambda r: r.replace(" ", "").startswith("catdog["); \
expand = lambda es: [q for e in es for r in x[e] for q in (expand(r.replace(" ", "")[7:-1].split(",")) if own(r) else [r])]; \
print("\n".join(dict.fromkeys(p["dependencies"] + expand([e for e in sys.argv[1].split(",") if e]))))' \
    "$EXTRAS" > requirements.txt \
 && if [ -f requirements.lock ]; then cp requirements.lock constraints.txt; else : > constraints.txt; fi \
 && cat requirements.txt

# 2. Dependencies in a virtual environment (`venv`), then a copy trimmed for the labeling image (`deps`):
#    without pip and setuptools (not needed to run) and without NumPy's own test suite. The full image
#    (EXTRAS=pipeline) keeps them: some pipeline dependencies import setuptools at run time.
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=requirements /src/requirements.txt /src/constraints.txt /tmp/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r /tmp/requirements.txt -c /tmp/constraints.txt

FROM venv AS deps
ARG EXTRAS=litert
RUN if [ "$EXTRAS" = litert ]; then \
      /opt/venv/bin/pip uninstall -y pip setuptools \
      && find /opt/venv -type d -name tests -path '*/site-packages/numpy/*' -prune -exec rm -rf {} + ; \
    fi

# 3. catdog itself, rebuilt on every code change (seconds): a wheel without dependencies, installed into
#    the venv, and just the files it installed (its RECORD) staged under /stage for the image.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/build && /opt/build/bin/pip install "setuptools>=68" wheel
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY catdog/ catdog/
RUN test -f README.md || echo "# catdog" > README.md \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM venv AS app
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps --no-index /wheels/*.whl \
 && /opt/venv/bin/python -c 'import importlib.metadata as m, os, shutil; \
files = [os.path.normpath(f.locate()) for f in m.distribution("catdog").files]; \
[(os.makedirs(os.path.dirname("/stage" + p), exist_ok=True), shutil.copy2(p, "/stage" + p)) for p in files if os.path.isfile(p)]' \
 && find /stage -type f

# 4. The model to bake in, if any: MODEL_DIR is a bundle folder inside the build context (e.g. models);
#    only model.tflite and meta.json are taken. Empty (the default) bakes nothing.
FROM ${PYTHON_IMAGE} AS model
ARG MODEL_DIR=""
COPY pyproject.toml ${MODEL_DIR:-pyproject.toml} /tmp/bundle/
RUN mkdir -p /opt/catdog \
 && if [ -n "$MODEL_DIR" ]; then \
      for f in meta.json model.tflite; do \
        [ -f "/tmp/bundle/$f" ] || { echo "error: $MODEL_DIR/$f not found: MODEL_DIR must be a trained bundle folder (catdog train --model-dir)" >&2; exit 1; }; \
      done; \
      mkdir /opt/catdog/model && cp /tmp/bundle/meta.json /tmp/bundle/model.tflite /opt/catdog/model/; \
    fi \
 && chmod -R a+rX /opt/catdog

# 5. The image: non-root, entrypoint `catdog`.
FROM ${PYTHON_IMAGE} AS label
ARG EXTRAS=litert
ARG MODEL_DIR=""
ARG CATDOG_UID=1000
# git is needed only by DVC, i.e. in the full (EXTRAS=pipeline) image.
RUN case ",$EXTRAS," in *,pipeline,*|*,dev,*) \
      apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* ;; esac \
 && groupadd --gid "$CATDOG_UID" catdog \
 && useradd --uid "$CATDOG_UID" --gid "$CATDOG_UID" --home-dir /home/catdog --create-home --shell /usr/sbin/nologin catdog
# USER: `--user UID:GID` may name a uid without a passwd entry; getpass.getuser() (used by DVC) then
# reads $USER instead of failing.
ENV PATH=/opt/venv/bin:$PATH \
    USER=catdog \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CATDOG_MODEL=${MODEL_DIR:+/opt/catdog/model}
COPY --from=deps /opt/venv /opt/venv
COPY --from=model /opt/catdog /opt/catdog
COPY --from=app /stage/ /
RUN catdog --help >/dev/null
LABEL org.opencontainers.image.title="catdog" \
      org.opencontainers.image.description="Batch cat/dog labeler: catdog predict-folder DIR --out CSV"
USER catdog
WORKDIR /data
ENTRYPOINT ["catdog"]
CMD ["--help"]
