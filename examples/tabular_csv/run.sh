#!/usr/bin/env bash
# A federation of 4 nodes, each with its own CSV file, over gRPC on this machine; then
# the trained model scores the test file.
#
#   bash examples/tabular_csv/run.sh [WORK_DIR] [ROUNDS]
#   STANDARDISE=off bash examples/tabular_csv/run.sh /tmp/off   # or own: to compare
#
# WORK_DIR (default: a new temporary folder) receives the CSV files (data/), the run folder
# (run/) and the predictions (predictions.csv). Plaintext on 127.0.0.1 (--insecure): for a
# local try-out only; see `accord certs` for TLS and tokens.
set -euo pipefail
work=${1:-$(mktemp -d)}
rounds=${2:-30}
standardise=${STANDARDISE:-global}
here=$(cd "$(dirname "$0")" && pwd)
nodes=4

python "$here/make_node_files.py" --out "$work/data" --nodes "$nodes"

# The server scores on its own validation and test files; port 0 picks a free port, which
# the server writes to run/server.json once it listens.
accord server --insecure --port 0 --out "$work/run" --expected-nodes "$nodes" \
    --rounds "$rounds" --policy actor-critic \
    --validation-data "$work/data/validation.csv" --test-data "$work/data/test.csv" \
    > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
    [ -s "$work/run/server.json" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.1
done
port=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' \
    "$work/run/server.json")

# Each node reads its own file; with --standardise global (the default) it sends only the
# moments of its features (count, sums, sums of squares) and trains on the run's global
# standardisation, which the server also applies to its validation and test files.
pids=()
for i in $(seq 0 $((nodes - 1))); do
    accord node --insecure --server "127.0.0.1:$port" --node-id "node-$i" \
        --data "$work/data/node-$i.csv" --standardise "$standardise" \
        > "$work/node-$i.log" 2>&1 &
    pids+=($!)
done
wait "$server" || { cat "$work/server.log"; exit 1; }
for pid in "${pids[@]}"; do wait "$pid"; done

# The run folder holds model.pt, best_model.pt and model.json (with the standardisation).
accord predict --model "$work/run" --data "$work/data/test.csv" --out "$work/predictions.csv"
echo "work folder: $work"
