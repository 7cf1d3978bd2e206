# callrouter + Asterisk 22 in one image: Asterisk and the engine under tini, as
# `callrouter serve` (Asterisk up, the engine in the foreground; SIGTERM stops the engine,
# then Asterisk). Built and run by the test suite with podman (tests/e2e/test_container.py).
#
# Debian sid is the first Debian with an Asterisk package again (bookworm has none).
# Asterisk runs inside the container as a host install (asterisk_mode=host); its
# configuration is rendered at start, with secrets generated into the state volume on
# first start (never baked into the image).
#
#   docker build -t callrouter .
#   docker run -d --name callrouter --network host -v callrouter-state:/var/lib/callrouter callrouter
#
# BASE: any Debian sid; without a registry, callrouter.provision.image makes one with
# debootstrap that already holds DEBIAN_PACKAGES (apt is then skipped).
# pip: the optional build secret `pip.conf` (a pip configuration file: index, find-links)
# is used by pip in the build and kept out of the image:
#   docker build --secret id=pip.conf,src=$HOME/.config/pip/pip.conf -t callrouter .
ARG BASE=debian:sid-slim
FROM ${BASE}

ARG DEBIAN_PACKAGES="asterisk asterisk-modules asterisk-core-sounds-en-gsm python3 python3-venv espeak-ng ca-certificates tini sip-tester"
ENV DEBIAN_FRONTEND=noninteractive \
    CALLROUTER_HOME=/var/lib/callrouter \
    CALLROUTER_ASTERISK_MODE=host \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/callrouter/bin:$PATH

RUN if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $DEBIAN_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# The wheel is built from the build context and installed into /opt/callrouter (a venv);
# no source tree stays in the image. The wheel carries its data (queues, asterisk-conf,
# prompts, SIPp scenarios).
RUN --mount=type=bind,target=/src \
    --mount=type=secret,id=pip.conf \
    --mount=type=cache,target=/root/.cache/pip \
    set -e; \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf PIP_DISABLE_PIP_VERSION_CHECK=1; \
    mkdir /tmp/src /tmp/dist; \
    tar -C /src --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist --exclude=./artifacts \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=./tests -cf - . | tar -C /tmp/src -xf -; \
    python3 -m venv /opt/callrouter; \
    /opt/callrouter/bin/pip wheel --no-deps --wheel-dir /tmp/dist /tmp/src; \
    /opt/callrouter/bin/pip install /tmp/dist/*.whl; \
    rm -rf /tmp/src /tmp/dist; \
    callrouter plan check >/dev/null

VOLUME ["/var/lib/callrouter"]
# SIP and RTP face the carrier and the softphones: bind them where the container's network
# lets them reach (e.g. CALLROUTER_SIP_BIND=0.0.0.0 behind your firewall, with
# CALLROUTER_TRUNK_IPS the carrier's addresses). ARI stays on loopback inside the container.
EXPOSE 5060/udp 10000-20000/udp 8080/tcp

# tini is PID 1 and forwards signals; `callrouter serve` brings Asterisk up, runs the
# engine and, on SIGTERM (docker/podman stop), stops the engine and then Asterisk.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["callrouter", "serve"]
