# The server URLs the database tests use (set up by .ci/services.sh). Source it before
# `cargo test` to run those tests locally too.
export EVENTFLOW_TEST_POSTGRES_URL="postgres://eventflow:eventflow@127.0.0.1:5432/eventflow"
export EVENTFLOW_TEST_MYSQL_URL="mysql://eventflow:eventflow@127.0.0.1:3306/eventflow"
# The Python of the receivers the otlp sink's and the chat formats' tests start
# (tests/support/otlp_receiver.py, chat_receiver.py).
export EVENTFLOW_TEST_OTLP_PYTHON="/opt/eventflow-otlp/bin/python"
