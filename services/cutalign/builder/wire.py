"""Decoding judgments so that invalid UTF-8 gets its own dead-letter reason instead of ``decode_error``.

Python protobuf (upb) refuses a ``string`` field holding invalid UTF-8 at parse time with the same
``DecodeError`` as truncated bytes, so the bus would dead-letter both as ``decode_error``. An operator needs
to tell them apart: truncation is a transport/producer bug, invalid UTF-8 is a producer encoding bug (often a
byte-level truncation of multi-byte text). So the builder's consumer parses with a *bytes twin* of
``cutalign.v1.Judgment`` — the same full name and wire layout, with every ``string`` field declared ``bytes``
(which accepts any bytes). The bus still rejects what is structurally malformed; the builder then parses the
real ``Judgment`` and, if that fails, names the field whose bytes are not UTF-8.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from cutalign.v1 import messages_pb2

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES


def _files_in_dependency_order(file: FileDescriptor) -> list[FileDescriptor]:
    ordered: list[FileDescriptor] = []

    def visit(f: FileDescriptor) -> None:
        if f in ordered:
            return
        for dependency in f.dependencies:
            visit(dependency)
        ordered.append(f)

    visit(file)
    return ordered


def _strings_to_bytes(messages: list[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        if message.options.map_entry:  # map keys cannot be bytes; no map in the judgment's schema anyway
            continue
        for field in message.field:
            if field.type == _STRING:
                field.type = _BYTES
        _strings_to_bytes(list(message.nested_type))


def bytes_twin(message_cls: type[Message]) -> type[Message]:
    """A class with ``message_cls``'s full name and wire layout whose ``string`` fields are ``bytes``."""
    pool = descriptor_pool.DescriptorPool()
    for file in _files_in_dependency_order(message_cls.DESCRIPTOR.file):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        _strings_to_bytes(list(proto.message_type))
        pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(message_cls.DESCRIPTOR.full_name))


LenientJudgment = bytes_twin(messages_pb2.Judgment)


def invalid_utf8_field(twin: Message, real: Descriptor = messages_pb2.Judgment.DESCRIPTOR) -> str | None:
    """The dotted path of the first field that is a ``string`` in ``real`` but not valid UTF-8 in ``twin``."""
    for field, value in twin.ListFields():
        real_field = real.fields_by_name[field.name]
        repeated = field.is_repeated
        values = list(value) if repeated else [value]
        for index, item in enumerate(values):
            where = f"{field.name}[{index}]" if repeated else field.name
            if real_field.type == FieldDescriptor.TYPE_STRING:
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError:
                    return where
            elif real_field.type == FieldDescriptor.TYPE_MESSAGE:
                inner = invalid_utf8_field(item, real_field.message_type)
                if inner is not None:
                    return f"{where}.{inner}"
    return None
