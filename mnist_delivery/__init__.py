"""Everything that works on the endpoint from outside its process: the deploy backends
(a local process, a Kubernetes Deployment) behind one interface, the HTTP client, the
acceptance tests of a deployed endpoint and the reading of its production traffic.

Runs without Dagster; the serving package never imports this one."""
