"""The same app and engines as Ray Serve deployments (`constellation serve --ray`): API ingress
replicas that meter into one PostgreSQL ledger, engine replicas per base model group.

The only package that imports Ray; nothing imports it unless `serve --ray` or its tests run."""
