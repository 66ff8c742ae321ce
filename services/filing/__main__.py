"""python -m services.filing: run the filing service (API and stream workers) until SIGINT/SIGTERM."""

from services.platform import run_service

if __name__ == "__main__":
    run_service("filing")
