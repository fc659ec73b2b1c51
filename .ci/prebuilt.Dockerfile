# The meshtrust image from a binary built on the host, for machines without an image registry
# (.ci/docker-image.sh makes the context: a folder holding only `meshtrust`). RUNTIME is the
# Dockerfile's `runtime` stage, built with `--target runtime`: the same stage users' images end in.
ARG RUNTIME=meshtrust-runtime:local
FROM ${RUNTIME}
COPY meshtrust /usr/local/bin/meshtrust
