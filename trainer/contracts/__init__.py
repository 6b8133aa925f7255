"""What the control plane and the workers share, and nothing that trains: the job spec
(``spec``), every kind's config model (``config``, ``generative``), the registry of job kinds
(``kinds``), job and attempt states (``states``) and Ray's token authentication (``ray_auth``).

pydantic and the standard library only: ``services/`` imports this package and never torch or
ray (``tests/trainer/contracts/test_config.py`` imports the service and every module here in a
fresh interpreter and checks).
"""
