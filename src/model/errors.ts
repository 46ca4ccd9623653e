/** Errors shared by the model-format readers (GGUF, safetensors, Hugging Face directories). */

/** A model file or directory is malformed or uses something this runtime does not support. */
export class ModelFormatError extends Error {
  override name = "ModelFormatError";
}
