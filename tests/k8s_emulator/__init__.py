"""Kubernetes stand-ins for tests: kmock's in-memory API server over real HTTP on 127.0.0.1, a
node that runs Jobs as local processes, and a controller that rolls Deployments out.

Code under test talks to them exactly as it would to a cluster: the official ``kubernetes``
client over HTTP, from any thread, configured by ``api_client()`` or a kubeconfig file.

One module per concern: ``api`` (the API server, each worked-around kmock gap marked "Gap:"
where it is made), ``patches`` and ``selectors`` (what kmock does not interpret), ``running``
(served on 127.0.0.1 by a thread; clients and kubeconfig), ``controllers`` (the watch loop the
simulated controllers share), ``node`` (Jobs run as local processes), ``deployments``
(Deployments rolled out: status and pods), ``objects`` (shared helpers). Tests import from
the package.

What these stand-ins do NOT do, so a test that passes against them proves nothing about it:

- No scheduling: no nodes, capacity, requests/limits, affinities, taints, quotas or
  priorities. Every Job's pod starts at once on the one simulated node.
- No admission, validation or RBAC: any well-formed JSON object is stored as sent (check
  manifests separately, e.g. with ``kubernetes-validate``); there is no authentication.
  The only admission-like check: a pod's named service account must exist (see the node).
- No defaulting beyond metadata (name from generateName, namespace, uid, resourceVersion,
  generation, creationTimestamp), apiVersion/kind, an empty or initial status and Secret
  ``stringData``: no spec defaults (Job backoffLimit/completions, pod restartPolicy, the Job
  selector and its controller-uid template labels, Deployment strategy, ...).
- No image pulls: the image is a label. The container's ``command`` + ``args`` run on this
  machine with its Python, files and network, from a given working directory, with a given
  base environment standing in for the image's ``ENV``.
- No volumes: ``volumes`` / ``volumeMounts`` are ignored (recorded as not honoured), so
  config maps are not files and nothing persists except through the shared local disk.
- No probes, lifecycle hooks, init or sidecar containers, security contexts, in-place
  restarts, resource limits or cgroups; ``restartPolicy: OnFailure`` retries as a new pod.
- No real controllers: only the two simulated here. No ReplicaSets (a Deployment's pods are
  created and deleted by the simulated controller, owned by the Deployment itself, and stay
  Pending), no Service endpoints (a Service's selector routes nothing), no garbage collection
  through ownerReferences, no TTL after finished, no namespace termination, no Events, no Job
  backoff delay between retries.
- API surface: create/get/list/watch/replace/patch/delete and the ``status`` subresource
  (plus pod ``log``) of the built-in resources kmock bundles (core v1, apps/v1, batch/v1,
  ...). No server-side apply, dryRun, pagination, field managers, deletecollection, watch
  bookmarks, delete options other than preconditions (propagationPolicy, grace periods), or other
  subresources (scale, exec, attach, eviction, ...: they answer 404).
"""

from .deployments import SimulatedDeploymentController
from .node import PodRun, SimulatedNode
from .running import RunningEmulator, running_emulator

__all__ = ["PodRun", "RunningEmulator", "SimulatedDeploymentController", "SimulatedNode", "running_emulator"]
