"""Generated protobuf modules of the image schema (package ``ckpt.v1``).

Do not edit: the sources are ``proto/ckpt/v1/*.proto``; regenerate with
``python -m ckpt.image.protogen``.  ``tests/unit/test_proto_fresh.py`` fails
when these modules are stale.
"""
