# Regenerate with `python -m ckpt.image.protogen` (or `make proto`); do not edit.
from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
HEX_FIELD_NUMBER: _ClassVar[int]
hex: _descriptor.FieldDescriptor
OCT_FIELD_NUMBER: _ClassVar[int]
oct: _descriptor.FieldDescriptor
