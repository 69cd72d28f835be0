from services.common.runtime import main
from services.planner.service import build

if __name__ == "__main__":
    main("planner", build)
