from tests.integration.harness import deployment

__all__ = ["deployment"]
