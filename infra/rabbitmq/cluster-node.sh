#!/bin/sh
# One node of the compose cluster (compose.cluster.yaml), in the official rabbitmq image's layout:
#   cluster-node.sh start     write the shared Erlang cookie, then run the image's own entrypoint
#   cluster-node.sh healthy   the healthcheck: this node runs, and so does every node listed
set -eu
CLUSTER_CONF=/etc/rabbitmq/conf.d/25-hotrepos-cluster.conf
DATA=/var/lib/rabbitmq

members() {
  sed -n 's/^cluster_formation\.classic_config\.nodes\.[0-9]* *= *//p' "$CLUSTER_CONF"
}

case "${1:-}" in
  start)
    # The nodes and the CLI authenticate to each other with this cookie; it comes from the
    # environment so that no secret is in the image or the repository. The image's entrypoint
    # hands the data directory, cookie included, to the rabbitmq user before starting the node.
    : "${HOTREPOS_ERLANG_COOKIE:?the nodes need a shared Erlang cookie}"
    (umask 077 && printf '%s' "$HOTREPOS_ERLANG_COOKIE" >"$DATA/.erlang.cookie")
    # Some images' CLI switches to the rabbitmq user even when started as root: it must read it too.
    chown rabbitmq:rabbitmq "$DATA/.erlang.cookie"
    # Blank nodes started together may each find no peer running yet and form clusters of one.
    # So a blank node other than the first waits until the first runs, then joins it. A node with
    # data never waits: it rejoins the peers it knew, whichever of them is up.
    first=$(members | head -n 1)
    me="rabbit@$(hostname -s)"
    if [ "$me" != "$first" ] && [ ! -d "$DATA/mnesia/$me" ]; then
      echo "cluster-node: $me is blank: waiting for $first to run before joining it"
      until rabbitmq-diagnostics -q -n "$first" check_running >/dev/null 2>&1; do sleep 2; done
    fi
    exec docker-entrypoint.sh rabbitmq-server
    ;;
  healthy)
    rabbitmq-diagnostics -q check_running >/dev/null
    running=$(rabbitmqctl -q cluster_status --formatter json | tr -d ' \n' |
      sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p')
    for node in $(members); do
      case ",$running," in
        *"\"$node\""*) ;;
        *) echo "$node is not running in this node's cluster (running: $running)"; exit 1 ;;
      esac
    done
    ;;
  *)
    echo "usage: cluster-node.sh start|healthy" >&2
    exit 2
    ;;
esac
