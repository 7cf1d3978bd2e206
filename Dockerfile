# callrouter + Asterisk 22 in one image. NOT BUILT HERE: the development machines have no
# Docker engine. Written with care; see README "Docker".
#
# Debian sid is the first Debian with an Asterisk package again (bookworm has none).
# Asterisk runs inside this container as a host install (asterisk_mode=host); its
# configuration is rendered from asterisk-conf/ at start, with secrets generated into the
# state volume on first start (never baked into the image).
FROM debian:sid-slim

ENV DEBIAN_FRONTEND=noninteractive \
    CALLROUTER_HOME=/var/lib/callrouter \
    CALLROUTER_ASTERISK_MODE=host \
    PYTHONUNBUFFERED=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      asterisk asterisk-modules asterisk-core-sounds-en-gsm \
      python3 python3-venv espeak-ng sip-tester ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/callrouter
COPY pyproject.toml setup.cfg README.md ./
COPY callrouter ./callrouter
COPY asterisk-conf ./asterisk-conf
COPY queues ./queues
COPY ivr_prompts ./ivr_prompts
COPY sip-sim ./sip-sim
RUN python3 -m venv /opt/callrouter/.venv \
 && /opt/callrouter/.venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/callrouter/.venv/bin/callrouter /usr/local/bin/callrouter
ENV CALLROUTER_DATA_DIR=/opt/callrouter

VOLUME ["/var/lib/callrouter"]
# SIP and RTP face the carrier and the softphones: bind them where the container's network
# lets them reach (e.g. CALLROUTER_SIP_BIND=0.0.0.0 behind your firewall). ARI stays on
# loopback inside the container.
EXPOSE 5060/udp 10000-20000/udp

# Render the configuration, start Asterisk, then run the engine in the foreground;
# SIGTERM (docker stop) stops the engine cleanly, then Asterisk.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", "callrouter asterisk up && trap 'callrouter asterisk down' EXIT && callrouter run"]
