# pgray image for KubeRay (and optionally `ray up`): the Ray 2.60 GPU image plus pgray and
# its pinned dependencies, so pods start without a multi-GB pip install.
#
# Build from the repository root (BuildKit reads pgray.Dockerfile.dockerignore next to
# this file, which keeps .venv and run outputs out of the build context):
#   docker build -f clusters/pgray.Dockerfile -t REGISTRY/pgray:$(git rev-parse --short HEAD) .
#   docker push REGISTRY/pgray:$(git rev-parse --short HEAD)
FROM rayproject/ray:2.60.0-py311-gpu

# Created by the image's `ray` user (a WORKDIR that does not exist yet may be created
# root-owned, and pip must write pgray.egg-info here). pgray/__init__.py is a placeholder:
# dependencies get their own layer, so editing pgray's code rebuilds only the small layers
# below, not the multi-GB torch one. The editable install maps the name `pgray` to
# ./pgray, which the later COPY fills with the real code.
RUN mkdir -p /home/ray/pgray/pgray && touch /home/ray/pgray/pgray/__init__.py
WORKDIR /home/ray/pgray
COPY --chown=ray:users pyproject.toml README.md ./
RUN pip install --no-cache-dir -e . \
 && pip install --no-cache-dir --no-deps torchattacks==3.5.1
COPY --chown=ray:users pgray ./pgray
COPY --chown=ray:users search_spaces ./search_spaces
