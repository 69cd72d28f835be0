from services.common.runtime import main
from services.responder.service import build

if __name__ == "__main__":
    main("responder", build)
