"""The OpenAI wire format as served here: `requests` holds the request models (their shared base
refuses each unimplemented field by name, unless it carries its neutral value, and any text that is
not valid Unicode); `responses` the response models that the OpenAPI document describes.

The inference routes build their answers as plain dicts (the hot path is not validated twice);
the response models only document them, and the tests check that real answers validate against
them."""
