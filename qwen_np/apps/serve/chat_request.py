"""Reading a chat request's conversation: messages, tools, tool_choice, response_format and
the template's arguments -> what the chat template is rendered with, and what the answer's
decoding is held to. Every malformed field is a 400 naming it.

    messages[i]        {"role": "system" | "developer" | "user" | "assistant" | "tool",
                        "content": str | [{"type": "text", "text": str}, ...] | null,
                        "tool_calls": [{"id", "type": "function",
                                        "function": {"name", "arguments": JSON text}}],
                        "reasoning_content": str, "tool_call_id": str, "name": str}
    tools              [{"type": "function", "function": {"name", "description",
                                                          "parameters": JSON schema}}]
    tool_choice        "none" | "auto" | "required" | {"type": "function",
                                                       "function": {"name"}}
    parallel_tool_calls  true (default) | false: with tool_choice "required" or a named
                       function, one call or more (the grammar's choice is the model's)
    response_format    {"type": "text" | "json_object"} |
                       {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
    chat_template_kwargs {...}, and enable_thinking (vLLM's and llama-server's)
    reasoning_format   "auto" (default: a thinking template's <think> goes to
                       reasoning_content) | "none" (the raw text, tags and all)

Text parts are joined with "\\n" (as vLLM joins them for a template that takes a string);
an image or audio part is a 400: the model reads text. "developer" is written as "system".
A tool call's `arguments`, JSON text in OpenAI's API, is parsed into the object that Qwen's
templates write with `tojson` (vLLM does the same), so the prompt is transformers' for the
same call. An assistant turn with tool calls and no content gets content "" (Qwen3's
template reads it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from qwen_np.apps.serve.job import shown
from qwen_np.apps.serve.openai_errors import ApiError

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")     # OpenAI's rule for function names
REASONING_FORMATS = ("auto", "none")


@dataclass(frozen=True)
class ChatRequest:
    """A chat body's conversation, read and checked."""
    messages: list[dict]
    tools: list[dict] | None
    tool_choice: str | dict            # "none" | "auto" | "required" | {"name": ...}
    response_format: dict | None       # None: free text
    template_kwargs: dict = field(default_factory=dict)
    reasoning_format: str = "auto"
    parallel_tool_calls: bool = True   # OpenAI's: with "required" or a named function, one
                                       # call (false) or one or more (true)

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or []]


def read_chat_request(body: dict) -> ChatRequest:
    tools = read_tools(body.get("tools"))
    return ChatRequest(read_messages(body.get("messages")), tools,
                       read_tool_choice(body.get("tool_choice"), tools),
                       read_response_format(body.get("response_format")),
                       read_template_kwargs(body), read_reasoning_format(body),
                       read_parallel_tool_calls(body))


def read_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    return [read_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


def read_message(m, where: str) -> dict:
    role = m.get("role") if isinstance(m, dict) else None
    if role not in ROLES:
        raise ApiError(400, f"{where}: role {shown(role)} is not one of {', '.join(ROLES)}",
                       param=f"{where}.role")
    out = {"role": "system" if role == "developer" else role,
           "content": read_content(m.get("content"), f"{where}.content",
                                   may_be_null=role == "assistant")}
    for name in ("name", "tool_call_id", "reasoning_content"):
        if m.get(name) is not None:
            if not isinstance(m[name], str):
                raise ApiError(400, f"{where}.{name} must be a string", param=f"{where}.{name}")
            out[name] = m[name]
    if m.get("tool_calls") is not None:
        if role != "assistant":
            raise ApiError(400, f"{where}: only an assistant turn has tool_calls",
                           param=f"{where}.tool_calls")
        out["tool_calls"] = read_tool_calls(m["tool_calls"], f"{where}.tool_calls")
    if out["content"] is None:
        if "tool_calls" not in out:
            raise ApiError(400, f"{where}: an assistant turn needs content or tool_calls",
                           param=f"{where}.content")
        out["content"] = ""
    return out


def read_content(content, where: str, may_be_null: bool):
    if content is None and may_be_null:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
                raise ApiError(400, f"{where}[{j}]: {kind} parts are not supported (this "
                                    f"model reads text only)", param=f"{where}[{j}]",
                               code="unsupported_content")
            else:
                raise ApiError(400, f"{where}[{j}] must be a {{\"type\": \"text\", \"text\": "
                                    f"...}} part", param=f"{where}[{j}]")
        return "\n".join(texts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


def read_tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise ApiError(400, f"{where} must be a list", param=where)
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                and call.get("type", "function") == "function"):
            raise ApiError(400, f"{at} must be {{\"type\": \"function\", \"function\": "
                                f"{{\"name\": ..., \"arguments\": ...}}}}", param=at)
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise ApiError(400, f"{at}.function.arguments is not JSON text",
                               param=f"{at}.function.arguments") from None
        if not isinstance(arguments, dict):
            raise ApiError(400, f"{at}.function.arguments must be a JSON object",
                           param=f"{at}.function.arguments")
        entry = {"type": "function",
                 "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def read_tools(tools) -> list[dict] | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list of functions", param="tools")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(name, str)
                and TOOL_NAME.fullmatch(name)):
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                f"{{\"name\": ...}}}} with a name of 1-64 letters, digits, "
                                f"_ . or -", param=f"tools[{i}]")
        if not isinstance(function.get("parameters", {}), dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema "
                                f"object", param=f"tools[{i}].function.parameters")
        if name in names:
            raise ApiError(400, f"tools[{i}]: the name {name!r} is given twice",
                           param=f"tools[{i}].function.name")
        names.add(name)
    return tools


def read_tool_choice(choice, tools: list[dict] | None):
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise ApiError(400, "tool_choice \"required\" needs tools", param="tool_choice")
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and \
        isinstance(choice.get("function"), dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(name, str)):
        raise ApiError(400, "tool_choice must be \"none\", \"auto\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                       param="tool_choice")
    known = [t["function"]["name"] for t in tools or []]
    if name not in known:
        raise ApiError(400, f"tool_choice names the function {name!r}, which is not among "
                            f"the tools ({', '.join(known) or 'none given'})",
                       param="tool_choice")
    return {"name": name}


def read_response_format(value) -> dict | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, (dict, bool)):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema "
                                "object", param="response_format.json_schema")
        return {"type": "json_schema", "schema": schema}
    raise ApiError(400, f"response_format type {shown(kind)} is not one of text, "
                        f"json_object, json_schema", param="response_format")


def read_template_kwargs(body: dict) -> dict:
    """chat_template_kwargs, with a top-level enable_thinking under it."""
    kwargs = {}
    if body.get("enable_thinking") is not None:
        if not isinstance(body["enable_thinking"], bool):
            raise ApiError(400, "enable_thinking must be true or false",
                           param="enable_thinking")
        kwargs["enable_thinking"] = body["enable_thinking"]
    given = body.get("chat_template_kwargs")
    if given is not None:
        if not isinstance(given, dict):
            raise ApiError(400, "chat_template_kwargs must be an object",
                           param="chat_template_kwargs")
        for name in given:
            if name in ("messages", "tools", "documents", "add_generation_prompt"):
                raise ApiError(400, f"chat_template_kwargs may not set {name!r}",
                               param="chat_template_kwargs")
        kwargs.update(given)
    return kwargs


def read_parallel_tool_calls(body: dict) -> bool:
    value = body.get("parallel_tool_calls", True)
    if not isinstance(value, bool):
        raise ApiError(400, "parallel_tool_calls must be true or false",
                       param="parallel_tool_calls")
    return value


def read_reasoning_format(body: dict) -> str:
    value = body.get("reasoning_format", "auto")
    if value not in REASONING_FORMATS:
        raise ApiError(400, f"reasoning_format is {shown(value)}; it must be \"auto\" or "
                            f"\"none\"", param="reasoning_format")
    return value
