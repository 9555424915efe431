"""The generator service: prompts from Kafka in, samples of the verified policy out (see ``service``)."""
