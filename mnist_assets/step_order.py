"""Which ready step starts first when the executor has fewer free slots than ready steps (the
local executor runs as many steps at once as there are cores: two on a 2-core laptop).

The chain's critical path is the MNIST download -> the classifier (the longest step) -> publish
-> delivery, and the classifier also needs the production labels (a tenth of a second of work,
about a second to launch). Those steps go first; the notMNIST download and the concept model,
which finish well before the classifier, take the slots left. Before this, the labels and the
concept model took the slots as the downloads finished, and the classifier started 2.2 s after
the MNIST download instead of about 1 s. Dagster reads the ``dagster/priority`` op tag (higher
first); Kubernetes' step executor does too."""

CRITICAL_PATH = {"dagster/priority": "1"}  # op tags: start before the other ready steps
